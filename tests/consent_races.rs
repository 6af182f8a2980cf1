//! Consent changes check and append as one step, across requests on both databases: of
//! concurrent withdrawals one lands and the others get 409, and an update racing a
//! withdrawal can never bring a withdrawn consent back.

mod common;

use common::{Db, TestApp};
use serde_json::{Value, json};

async fn concurrent_withdrawals_give_one_withdrawn_entry_and_409s(db: Db) {
    let app = TestApp::spawn(db).await;
    let alice = app.uploader("alice");
    let consent = app.grant(&alice, &["audio"]).await;
    let id = consent["id"].as_str().unwrap().to_owned();
    let url = format!("{}/v1/consents/{id}/withdraw", app.base);
    let statuses = common::concurrent_statuses((0..8).map(|_| app.http.post(&url).bearer_auth(&alice))).await;
    assert_eq!(statuses, [201, 409, 409, 409, 409, 409, 409, 409]);
    let (_, consents) = app.get_json(&alice, "/v1/consents").await;
    let withdrawn = consents["history"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["event"] == "withdrawn")
        .count();
    assert_eq!(withdrawn, 1, "one withdrawn entry in the ledger");
    app.stop().await;
}

async fn an_update_racing_a_withdrawal_never_reactivates_the_consent(db: Db) {
    let app = TestApp::spawn(db).await;
    let alice = app.uploader("alice");
    for round in 0..5 {
        let consent = app.grant(&alice, &["audio"]).await;
        let id = consent["id"].as_str().unwrap().to_owned();
        let update = common::status_of(
            app.http
                .put(format!("{}/v1/consents/{id}", app.base))
                .bearer_auth(&alice)
                .json(&json!({
                    "purposes": ["model-training"],
                    "data_categories": ["audio", "text"],
                    "policy_version": "2026-02",
                    "jurisdiction": "EU",
                })),
        );
        let withdraw = common::status_of(
            app.http
                .post(format!("{}/v1/consents/{id}/withdraw", app.base))
                .bearer_auth(&alice),
        );
        let (update, withdraw) = (update.await.unwrap(), withdraw.await.unwrap());
        assert_eq!(withdraw, 201, "round {round}: the withdrawal lands");
        assert!(
            matches!(update, 200 | 201 | 409),
            "round {round}: update answered {update}"
        );
        let (_, consents) = app.get_json(&alice, "/v1/consents").await;
        let history: Vec<&Value> = consents["history"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["consent_id"] == id.as_str())
            .collect();
        assert_eq!(
            history.last().unwrap()["event"],
            "withdrawn",
            "round {round}: nothing follows the withdrawal: {history:?}"
        );
        assert!(
            !consents["active"]
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["consent_id"] == id.as_str()),
            "round {round}: the consent is not active"
        );
    }
    app.stop().await;
}

common::on_both_databases!(
    concurrent_withdrawals_give_one_withdrawn_entry_and_409s,
    an_update_racing_a_withdrawal_never_reactivates_the_consent,
);
