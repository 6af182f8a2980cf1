//! A minimal QLDB session driver: a pool of sessions, transactions whose statements carry
//! Ion parameters and whose commit carries the digest QLDB checks, and whole-transaction
//! retries on optimistic-concurrency conflicts, expired sessions and throttling.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_qldbsession::error::SdkError;
use aws_sdk_qldbsession::operation::send_command::{SendCommandError, SendCommandOutput};
use aws_sdk_qldbsession::primitives::Blob;
use aws_sdk_qldbsession::types::{
    AbortTransactionRequest, CommitTransactionRequest, ExecuteStatementRequest, FetchPageRequest, Page,
    StartSessionRequest, StartTransactionRequest, ValueHolder,
};
use ion_rs::Element;
use udim_ports::PortError;

use crate::digest::CommitDigest;

pub(crate) const PROVIDER: &str = "qldb";
/// Attempts per transaction: QLDB has no locks, so concurrent appends to the one head
/// document conflict and all but one start over.
const MAX_ATTEMPTS: u32 = 12;
/// Sessions kept for reuse; QLDB allows 1,500 per ledger.
const MAX_IDLE_SESSIONS: usize = 16;

/// Why a transaction did not commit, as far as retrying goes.
#[derive(Debug)]
pub(crate) enum TxnError {
    /// Another transaction changed what this one read: start over.
    Conflict(String),
    /// The session expired or was closed: start over on a new session.
    Session(String),
    /// Throttled or briefly unreachable before anything was committed: start over later.
    Transient(PortError),
    /// Anything else, including a commit whose outcome is unknown: not retried.
    Fatal(PortError),
}

impl From<PortError> for TxnError {
    fn from(e: PortError) -> Self {
        Self::Fatal(e)
    }
}

impl TxnError {
    fn into_port(self) -> PortError {
        match self {
            Self::Conflict(why) | Self::Session(why) => PortError::unavailable(PROVIDER, why),
            Self::Transient(e) | Self::Fatal(e) => e,
        }
    }
}

pub(crate) fn ion_error(e: ion_rs::IonError) -> PortError {
    PortError::generic(PROVIDER, e)
}

fn classify(e: SdkError<SendCommandError>) -> TxnError {
    match &e {
        SdkError::ServiceError(service) => {
            let err = service.err();
            let why = err.to_string();
            if err.is_occ_conflict_exception() {
                TxnError::Conflict(why)
            } else if err.is_invalid_session_exception() {
                TxnError::Session(why)
            } else if err.is_capacity_exceeded_exception()
                || err.is_rate_exceeded_exception()
                || err.is_limit_exceeded_exception()
            {
                TxnError::Transient(PortError::unavailable(PROVIDER, e))
            } else {
                TxnError::Fatal(PortError::generic(PROVIDER, e))
            }
        }
        SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) | SdkError::ResponseError(_) => {
            TxnError::Transient(PortError::unavailable(PROVIDER, e))
        }
        _ => TxnError::Fatal(PortError::generic(PROVIDER, e)),
    }
}

fn missing(what: &str) -> TxnError {
    TxnError::Fatal(PortError::generic(PROVIDER, format!("QLDB answered without {what}")))
}

/// Talks to one ledger.
#[derive(Debug, Clone)]
pub(crate) struct Driver(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    client: aws_sdk_qldbsession::Client,
    ledger_name: String,
    idle: Mutex<Vec<String>>,
}

/// One open transaction on one session. Owned, so a transaction body can take it by value
/// and hand it back: its future then borrows nothing from the driver.
pub(crate) struct Txn {
    driver: Driver,
    session: String,
    id: String,
    digest: CommitDigest,
}

impl Driver {
    pub(crate) fn new(client: aws_sdk_qldbsession::Client, ledger_name: &str) -> Self {
        Self(Arc::new(Inner {
            client,
            ledger_name: ledger_name.to_owned(),
            idle: Mutex::new(Vec::new()),
        }))
    }

    fn take_idle(&self) -> Option<String> {
        self.0.idle.lock().unwrap_or_else(|e| e.into_inner()).pop()
    }

    fn release(&self, session: String) {
        let mut idle = self.0.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < MAX_IDLE_SESSIONS {
            idle.push(session);
        }
    }

    async fn start_session(&self) -> Result<String, TxnError> {
        let request = StartSessionRequest::builder()
            .ledger_name(&self.0.ledger_name)
            .build()
            .map_err(|e| TxnError::Fatal(PortError::generic(PROVIDER, e)))?;
        let out = self
            .0
            .client
            .send_command()
            .start_session(request)
            .send()
            .await
            .map_err(classify)?;
        out.start_session()
            .and_then(|s| s.session_token())
            .map(str::to_owned)
            .ok_or_else(|| missing("a session token"))
    }

    async fn begin(&self) -> Result<Txn, TxnError> {
        let session = match self.take_idle() {
            Some(session) => session,
            None => self.start_session().await?,
        };
        let started = self
            .0
            .client
            .send_command()
            .session_token(&session)
            .start_transaction(StartTransactionRequest::builder().build())
            .send()
            .await
            .map_err(classify)?;
        let id = started
            .start_transaction()
            .and_then(|t| t.transaction_id())
            .ok_or_else(|| missing("a transaction id"))?
            .to_owned();
        let digest = CommitDigest::new(&id).map_err(ion_error)?;
        Ok(Txn {
            driver: self.clone(),
            session,
            id,
            digest,
        })
    }

    /// Runs `body` in a transaction and commits it, starting over (on a fresh transaction,
    /// with back-off) when QLDB reports a conflict, an expired session or throttling.
    /// `body` gets the transaction and gives it back with its result.
    pub(crate) async fn transact<T, F, Fut>(&self, mut body: F) -> udim_ports::Result<T>
    where
        F: FnMut(Txn) -> Fut,
        Fut: Future<Output = (Txn, Result<T, TxnError>)>,
    {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let outcome = match self.begin().await {
                Ok(txn) => match body(txn).await {
                    (txn, Ok(value)) => txn.commit().await.map(|()| value),
                    (txn, Err(e)) => {
                        txn.abort(&e).await;
                        Err(e)
                    }
                },
                Err(e) => Err(e),
            };
            match outcome {
                Ok(value) => return Ok(value),
                Err(TxnError::Conflict(_) | TxnError::Session(_) | TxnError::Transient(_))
                    if attempt < MAX_ATTEMPTS =>
                {
                    // 10 ms doubling to 640 ms, with jitter so conflicting writers spread out.
                    let base = 10u64 << (attempt - 1).min(6);
                    let mut r = [0u8; 1];
                    let jitter = aws_lc_rs::rand::fill(&mut r).map_or(0, |()| base * u64::from(r[0]) / 255);
                    tokio::time::sleep(Duration::from_millis(base + jitter)).await;
                }
                Err(e) => return Err(e.into_port()),
            }
        }
    }
}

impl Txn {
    /// Executes one statement and returns every value of its result, all pages read.
    pub(crate) async fn execute(
        &mut self,
        statement: &str,
        parameters: Vec<Element>,
    ) -> Result<Vec<Element>, TxnError> {
        self.digest.add(statement, &parameters).map_err(ion_error)?;
        let mut holders = Vec::with_capacity(parameters.len());
        for parameter in &parameters {
            let bytes = parameter.encode_as(ion_rs::v1_0::Binary).map_err(ion_error)?;
            holders.push(ValueHolder::builder().ion_binary(Blob::new(bytes)).build());
        }
        let request = ExecuteStatementRequest::builder()
            .transaction_id(&self.id)
            .statement(statement)
            .set_parameters((!holders.is_empty()).then_some(holders))
            .build()
            .map_err(|e| TxnError::Fatal(PortError::generic(PROVIDER, e)))?;
        let out = self.send(|c| c.execute_statement(request)).await?;
        let mut values = Vec::new();
        let mut page = out
            .execute_statement()
            .and_then(|r| r.first_page())
            .cloned()
            .ok_or_else(|| missing("a first page"))?;
        loop {
            read_page(&page, &mut values)?;
            let Some(token) = page.next_page_token() else {
                return Ok(values);
            };
            let request = FetchPageRequest::builder()
                .transaction_id(&self.id)
                .next_page_token(token)
                .build()
                .map_err(|e| TxnError::Fatal(PortError::generic(PROVIDER, e)))?;
            let out = self.send(|c| c.fetch_page(request)).await?;
            page = out
                .fetch_page()
                .and_then(|r| r.page())
                .cloned()
                .ok_or_else(|| missing("a page"))?;
        }
    }

    async fn send(
        &self,
        command: impl FnOnce(
            aws_sdk_qldbsession::operation::send_command::builders::SendCommandFluentBuilder,
        ) -> aws_sdk_qldbsession::operation::send_command::builders::SendCommandFluentBuilder,
    ) -> Result<SendCommandOutput, TxnError> {
        command(self.driver.0.client.send_command().session_token(&self.session))
            .send()
            .await
            .map_err(classify)
    }

    async fn commit(self) -> Result<(), TxnError> {
        let digest = self.digest.bytes();
        let request = CommitTransactionRequest::builder()
            .transaction_id(&self.id)
            .commit_digest(Blob::new(digest.to_vec()))
            .build()
            .map_err(|e| TxnError::Fatal(PortError::generic(PROVIDER, e)))?;
        let out = match self.send(|c| c.commit_transaction(request)).await {
            Ok(out) => out,
            // A conflict or an expired session means nothing was committed; after any other
            // failure the outcome is unknown and starting over could append twice. After a
            // conflict the session itself is sound, and concurrent appends conflict often.
            Err(e @ TxnError::Conflict(_)) => {
                self.driver.release(self.session);
                return Err(e);
            }
            Err(e @ TxnError::Session(_)) => return Err(e),
            Err(e) => {
                return Err(TxnError::Fatal(PortError::unavailable(
                    PROVIDER,
                    format!("the commit's outcome is unknown: {:?}", e),
                )));
            }
        };
        let committed = out.commit_transaction();
        if committed.and_then(|c| c.commit_digest()).map(Blob::as_ref) != Some(&digest[..])
            || committed.and_then(|c| c.transaction_id()) != Some(self.id.as_str())
        {
            return Err(TxnError::Fatal(PortError::Integrity(
                "QLDB committed a different digest or transaction than was sent".into(),
            )));
        }
        self.driver.release(self.session);
        Ok(())
    }

    /// Ends a transaction that will not commit. The session is reused only if it is
    /// still sound.
    async fn abort(self, why: &TxnError) {
        if matches!(why, TxnError::Session(_)) {
            return;
        }
        if self
            .send(|c| c.abort_transaction(AbortTransactionRequest::builder().build()))
            .await
            .is_ok()
        {
            self.driver.release(self.session);
        }
    }
}

fn read_page(page: &Page, values: &mut Vec<Element>) -> Result<(), TxnError> {
    for holder in page.values() {
        let value = match (holder.ion_binary(), holder.ion_text()) {
            (Some(binary), _) => Element::read_one(binary.as_ref()),
            (None, Some(text)) => Element::read_one(text.as_bytes()),
            (None, None) => return Err(missing("a value")),
        };
        values.push(value.map_err(ion_error)?);
    }
    Ok(())
}
