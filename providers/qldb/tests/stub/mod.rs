//! A small stand-in for the QLDB session endpoint, started by the tests: QLDB ended on
//! 2025-07-31 and no emulator of it exists. It speaks the real wire protocol (AWS JSON 1.0
//! `QLDBSession.SendCommand`, Ion binary values, base64 blobs, modeled error types) and
//! enforces what the provider depends on: sessions, transactions that see their own writes,
//! optimistic concurrency (a commit fails with `OccConflictException` if a table it read was
//! changed by another commit since it began), the commit digest, and paged results.
//!
//! Used by the provider's tests and, through `#[path]`, by the service's `qldb` test.
//!
//! Its PartiQL is only the handful of statement shapes the provider sends; anything else is
//! a `BadRequestException`. It is a fake, not QLDB: the provider's statements were written
//! against QLDB's PartiQL reference and were never run on the real service.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Value, json};
use udim_qldb::digest::CommitDigest;
use udim_qldb::ion_rs::{self, Element, Struct};

/// Values per result page: small, so the provider's paging is exercised.
const PAGE: usize = 5;

#[derive(Debug, Clone, Default)]
struct Table {
    docs: Vec<(String, Element)>,
    version: u64,
}

enum Write {
    Create(String),
    Insert(String, String, Element),
    Update(String, Vec<(String, Element)>),
}

struct Txn {
    session: String,
    view: BTreeMap<String, Table>,
    read: HashMap<String, u64>,
    writes: Vec<Write>,
    digest: CommitDigest,
    pages: HashMap<String, Vec<Element>>,
}

#[derive(Default)]
struct Ledger {
    sessions: std::collections::HashSet<String>,
    txns: HashMap<String, Txn>,
    tables: BTreeMap<String, Table>,
    next: u64,
    conflicts: u64,
}

struct Failure(&'static str, String);

type Outcome = Result<Value, Failure>;

fn bad(why: impl Into<String>) -> Failure {
    Failure("BadRequestException", why.into())
}

impl Ledger {
    fn token(&mut self, prefix: &str, len: usize) -> String {
        self.next += 1;
        let token = format!("{prefix}{:0>width$}", self.next, width = len - prefix.len());
        token[..len].to_owned()
    }

    fn txn(&mut self, session: &str, id: &str) -> Result<&mut Txn, Failure> {
        match self.txns.get_mut(id) {
            Some(txn) if txn.session == session => Ok(txn),
            _ => Err(Failure(
                "InvalidSessionException",
                format!("Transaction {id} has expired"),
            )),
        }
    }

    fn command(&mut self, body: &Value) -> Outcome {
        if let Some(start) = body.get("StartSession") {
            if start["LedgerName"].as_str().is_none() {
                return Err(bad("no LedgerName"));
            }
            let session = self.token("session-", 32);
            self.sessions.insert(session.clone());
            return Ok(json!({"StartSession": {"SessionToken": session}}));
        }
        let session = body["SessionToken"].as_str().unwrap_or_default().to_owned();
        if !self.sessions.contains(&session) {
            return Err(Failure("InvalidSessionException", "the session is not open".into()));
        }
        if body.get("StartTransaction").is_some() {
            if self.txns.values().any(|t| t.session == session) {
                return Err(bad("the session already has an open transaction"));
            }
            let id = self.token("T", 22);
            let digest = CommitDigest::new(&id).map_err(|e| bad(e.to_string()))?;
            self.txns.insert(
                id.clone(),
                Txn {
                    session,
                    view: self.tables.clone(),
                    read: HashMap::new(),
                    writes: Vec::new(),
                    digest,
                    pages: HashMap::new(),
                },
            );
            return Ok(json!({"StartTransaction": {"TransactionId": id}}));
        }
        if let Some(request) = body.get("ExecuteStatement") {
            let id = request["TransactionId"].as_str().unwrap_or_default();
            let statement = request["Statement"].as_str().ok_or_else(|| bad("no Statement"))?;
            let parameters = request["Parameters"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default()
                .iter()
                .map(|p| {
                    let bytes = B64.decode(p["IonBinary"].as_str().ok_or_else(|| bad("not IonBinary"))?);
                    Element::read_one(bytes.map_err(|e| bad(e.to_string()))?).map_err(|e| bad(e.to_string()))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let next = self.next;
            let txn = self.txn(&session, id)?;
            txn.digest.add(statement, &parameters).map_err(|e| bad(e.to_string()))?;
            let values = txn.execute(statement, parameters, next)?;
            self.next += values.len() as u64;
            let id = id.to_owned();
            let page = self.page(&session, &id, values)?;
            return Ok(json!({"ExecuteStatement": {"FirstPage": page}}));
        }
        if let Some(request) = body.get("FetchPage") {
            let id = request["TransactionId"].as_str().unwrap_or_default().to_owned();
            let token = request["NextPageToken"].as_str().unwrap_or_default();
            let values = self
                .txn(&session, &id)?
                .pages
                .remove(token)
                .ok_or_else(|| bad("unknown page token"))?;
            let page = self.page(&session, &id, values)?;
            return Ok(json!({"FetchPage": {"Page": page}}));
        }
        if let Some(request) = body.get("CommitTransaction") {
            let id = request["TransactionId"].as_str().unwrap_or_default().to_owned();
            self.txn(&session, &id)?;
            let txn = self.txns.remove(&id).expect("checked");
            let sent = B64
                .decode(request["CommitDigest"].as_str().unwrap_or_default())
                .map_err(|e| bad(e.to_string()))?;
            if sent != txn.digest.bytes() {
                return Err(bad("the commit digest does not match the transaction's statements"));
            }
            for (table, version) in &txn.read {
                if self.tables.get(table).map(|t| t.version) != Some(*version) {
                    self.conflicts += 1;
                    return Err(Failure(
                        "OccConflictException",
                        format!("Optimistic concurrency control (OCC) failure on {table}"),
                    ));
                }
            }
            for write in txn.writes {
                self.apply(write);
            }
            return Ok(json!({"CommitTransaction": {"TransactionId": id, "CommitDigest": B64.encode(sent)}}));
        }
        if body.get("AbortTransaction").is_some() {
            self.txns.retain(|_, t| t.session != session);
            return Ok(json!({"AbortTransaction": {}}));
        }
        if body.get("EndSession").is_some() {
            self.txns.retain(|_, t| t.session != session);
            self.sessions.remove(&session);
            return Ok(json!({"EndSession": {}}));
        }
        Err(bad("no command"))
    }

    fn page(&mut self, session: &str, id: &str, mut values: Vec<Element>) -> Result<Value, Failure> {
        let rest = values.split_off(values.len().min(PAGE));
        let encoded: Vec<Value> = values
            .iter()
            .map(|v| {
                let bytes = v.encode_as(ion_rs::v1_0::Binary).expect("encodable");
                json!({"IonBinary": B64.encode(bytes)})
            })
            .collect();
        if rest.is_empty() {
            return Ok(json!({"Values": encoded}));
        }
        let token = self.token("page-", 24);
        self.txn(session, id)?.pages.insert(token.clone(), rest);
        Ok(json!({"Values": encoded, "NextPageToken": token}))
    }

    fn apply(&mut self, write: Write) {
        match write {
            Write::Create(table) => {
                self.tables.insert(table, Table::default());
            }
            Write::Insert(table, id, document) => {
                let t = self.tables.get_mut(&table).expect("created");
                t.docs.push((id, document));
                t.version += 1;
            }
            Write::Update(table, assignments) => {
                let t = self.tables.get_mut(&table).expect("created");
                for (_, document) in &mut t.docs {
                    *document = assign(document, &assignments);
                }
                t.version += 1;
            }
        }
    }
}

fn assign(document: &Element, assignments: &[(String, Element)]) -> Element {
    let mut fields: Vec<(String, Element)> = document
        .as_struct()
        .expect("documents are structs")
        .fields()
        .map(|(name, value)| (name.text().unwrap_or_default().to_owned(), value.clone()))
        .filter(|(name, _)| !assignments.iter().any(|(a, _)| a == name))
        .collect();
    fields.extend(assignments.iter().cloned());
    Struct::from_iter(fields).into()
}

fn tokens(statement: &str) -> Vec<String> {
    statement
        .replace('(', " ( ")
        .replace(')', " ) ")
        .replace(',', " , ")
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

/// `?, ?, ...` up to `close`; returns how many marks and the rest.
fn marks<'a>(tokens: &'a [&'a str], close: &str) -> Option<(usize, &'a [&'a str])> {
    let mut n = 0;
    let mut rest = tokens;
    loop {
        match rest {
            ["?", ",", tail @ ..] => {
                n += 1;
                rest = tail;
            }
            ["?", end, tail @ ..] if *end == close => return Some((n + 1, tail)),
            _ => return None,
        }
    }
}

impl Txn {
    fn table(&mut self, name: &str) -> Result<&mut Table, Failure> {
        let table = self.view.get_mut(name).ok_or_else(|| bad(format!("no table {name}")))?;
        self.read.entry(name.to_owned()).or_insert(table.version);
        Ok(table)
    }

    fn execute(&mut self, statement: &str, params: Vec<Element>, next: u64) -> Result<Vec<Element>, Failure> {
        let owned = tokens(statement);
        let t: Vec<&str> = owned.iter().map(String::as_str).collect();
        let expect = |n: usize| {
            if n == params.len() {
                Ok(())
            } else {
                Err(bad(format!("{n} parameters expected, {} given", params.len())))
            }
        };
        match t.as_slice() {
            [
                "SELECT",
                "name",
                "FROM",
                "information_schema.user_tables",
                "WHERE",
                "status",
                "=",
                "'ACTIVE'",
            ] => {
                expect(0)?;
                Ok(self
                    .view
                    .keys()
                    .map(|name| Struct::from_iter([("name", Element::string(name.as_str()))]).into())
                    .collect())
            }
            ["CREATE", "TABLE", name] => {
                expect(0)?;
                if self.view.contains_key(*name) {
                    return Err(bad(format!("table {name} exists")));
                }
                self.view.insert((*name).to_owned(), Table::default());
                self.writes.push(Write::Create((*name).to_owned()));
                Ok(vec![Struct::from_iter([("tableId", Element::string(*name))]).into()])
            }
            ["CREATE", "INDEX", "ON", name, "(", _field, ")"] => {
                expect(0)?;
                self.table(name)?;
                Ok(vec![Struct::from_iter([("tableId", Element::string(*name))]).into()])
            }
            ["SELECT", "*", "FROM", name, rest @ ..] => {
                let keep: Box<dyn Fn(&Struct) -> bool> = match rest {
                    [] => {
                        expect(0)?;
                        Box::new(|_| true)
                    }
                    ["WHERE", field, "=", "?"] => {
                        expect(1)?;
                        let (field, value) = ((*field).to_owned(), params[0].clone());
                        Box::new(move |d| d.get(&field) == Some(&value))
                    }
                    ["WHERE", field, "IN", "(", list @ ..] => {
                        let (n, tail) = marks(list, ")").ok_or_else(|| bad("a malformed IN list"))?;
                        if !tail.is_empty() {
                            return Err(bad("text after the IN list"));
                        }
                        expect(n)?;
                        let (field, values) = ((*field).to_owned(), params.clone());
                        Box::new(move |d| d.get(&field).is_some_and(|v| values.contains(v)))
                    }
                    ["WHERE", field, ">=", "?"] => {
                        expect(1)?;
                        let (field, min) = (
                            (*field).to_owned(),
                            params[0].as_i64().ok_or_else(|| bad(">= needs an int"))?,
                        );
                        Box::new(move |d| d.get(&field).and_then(Element::as_i64).is_some_and(|v| v >= min))
                    }
                    _ => return Err(bad(format!("unsupported statement: {statement}"))),
                };
                let table = self.table(name)?;
                Ok(table
                    .docs
                    .iter()
                    .filter(|(_, d)| d.as_struct().is_some_and(&keep))
                    .map(|(_, d)| d.clone())
                    .collect())
            }
            ["INSERT", "INTO", name, rest @ ..] => {
                let n = match rest {
                    ["?"] => 1,
                    ["<<", list @ ..] => match marks(list, ">>") {
                        Some((n, [])) => n,
                        _ => return Err(bad("a malformed bag")),
                    },
                    _ => return Err(bad(format!("unsupported statement: {statement}"))),
                };
                expect(n)?;
                let mut ids = Vec::new();
                for (i, document) in params.into_iter().enumerate() {
                    if document.as_struct().is_none() {
                        return Err(bad("only documents can be inserted"));
                    }
                    let id = format!("doc{:0>18}", next + i as u64);
                    let table = self.table(name)?;
                    table.docs.push((id.clone(), document.clone()));
                    self.writes
                        .push(Write::Insert((*name).to_owned(), id.clone(), document));
                    ids.push(Struct::from_iter([("documentId", Element::string(id))]).into());
                }
                Ok(ids)
            }
            ["UPDATE", name, "SET", rest @ ..] => {
                let mut assignments = Vec::new();
                let mut rest = rest;
                loop {
                    match rest {
                        [field, "=", "?", tail @ ..] => {
                            let value = params
                                .get(assignments.len())
                                .cloned()
                                .ok_or_else(|| bad("too few parameters"))?;
                            assignments.push(((*field).to_owned(), value));
                            rest = match tail {
                                [",", more @ ..] => more,
                                [] => break,
                                _ => return Err(bad(format!("unsupported statement: {statement}"))),
                            };
                        }
                        _ => return Err(bad(format!("unsupported statement: {statement}"))),
                    }
                }
                expect(assignments.len())?;
                let table = self.table(name)?;
                let mut ids = Vec::new();
                for (id, document) in &mut table.docs {
                    *document = assign(document, &assignments);
                    ids.push(Struct::from_iter([("documentId", Element::string(id.as_str()))]).into());
                }
                self.writes.push(Write::Update((*name).to_owned(), assignments));
                Ok(ids)
            }
            _ => Err(bad(format!("unsupported statement: {statement}"))),
        }
    }
}

/// A running stub; stops when dropped.
pub struct Stub {
    pub endpoint: String,
    ledger: Arc<Mutex<Ledger>>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for Stub {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn send_command(State(ledger): State<Arc<Mutex<Ledger>>>, headers: HeaderMap, body: String) -> Response {
    if headers.get("x-amz-target").and_then(|v| v.to_str().ok()) != Some("QLDBSession.SendCommand") {
        return (StatusCode::BAD_REQUEST, "not a QLDB session call").into_response();
    }
    let outcome = match serde_json::from_str::<Value>(&body) {
        Ok(body) => ledger.lock().unwrap().command(&body),
        Err(e) => Err(bad(e.to_string())),
    };
    let (status, body) = match outcome {
        Ok(value) => (StatusCode::OK, value),
        Err(Failure(kind, message)) => (StatusCode::BAD_REQUEST, json!({"__type": kind, "Message": message})),
    };
    (
        status,
        [(header::CONTENT_TYPE, "application/x-amz-json-1.0")],
        body.to_string(),
    )
        .into_response()
}

impl Stub {
    pub async fn start() -> Self {
        let ledger = Arc::new(Mutex::new(Ledger::default()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let app = axum::Router::new()
            .route("/", axum::routing::post(send_command))
            .with_state(ledger.clone());
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self {
            endpoint,
            ledger,
            server,
        }
    }

    /// A client for the stub with the SDK's own retries off, so the provider's are tested.
    pub fn client(&self) -> udim_qldb::aws_sdk_qldbsession::Client {
        use udim_qldb::aws_sdk_qldbsession::config::{BehaviorVersion, Credentials, Region, retry::RetryConfig};
        let config = udim_qldb::aws_sdk_qldbsession::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .credentials_provider(Credentials::new("AKIDSTUB", "stub-secret", None, None, "stub"))
            .endpoint_url(&self.endpoint)
            .retry_config(RetryConfig::disabled())
            .build();
        udim_qldb::aws_sdk_qldbsession::Client::from_conf(config)
    }

    /// How many commits failed on an optimistic-concurrency conflict.
    pub fn conflicts(&self) -> u64 {
        self.ledger.lock().unwrap().conflicts
    }

    /// Ends every session, as QLDB does after 13 idle minutes or on its own restarts.
    pub fn expire_sessions(&self) {
        let mut ledger = self.ledger.lock().unwrap();
        ledger.sessions.clear();
        ledger.txns.clear();
    }

    /// Overwrites field `field` of the committed document with `idx` = `index` in `table`,
    /// as someone with write access to the ledger could.
    pub fn tamper(&self, table: &str, index: i64, field: &str, value: Element) {
        let mut ledger = self.ledger.lock().unwrap();
        let t = ledger.tables.get_mut(table).expect("table");
        let (_, document) = t
            .docs
            .iter_mut()
            .find(|(_, d)| d.as_struct().and_then(|d| d.get("idx")).and_then(Element::as_i64) == Some(index))
            .expect("document");
        *document = assign(document, &[(field.to_owned(), value)]);
        t.version += 1;
    }
}
