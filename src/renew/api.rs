//! The renewal journal over HTTP, behind the web server's authentication:
//!
//! - `GET /api/v1/renewals`: every VM's renewal record (tries in the current window,
//!   next try, last error, gave up, the invoice in flight) as JSON;
//! - `POST /api/v1/renewals/clear?account=A&vm=ID`: re-arms a VM whose tries are used up
//!   (or backing off): the renewal task forgets the window's tries on its next pass and
//!   tries again at once. The give-up alert stays until the VM is renewed.
//!
//! The clear is written to its own table; the renewal task applies it (see [`journal`]).
//!
//! [`journal`]: super::journal

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};

use super::journal::{JournalError, RenewalJournal};
use crate::web_body::ChunksBody;

const LIST: &str = "/api/v1/renewals";
const CLEAR: &str = "/api/v1/renewals/clear";

fn reply(status: StatusCode, content_type: &'static str, body: String) -> Response<ChunksBody> {
    let mut r = Response::new(ChunksBody::from(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    r
}

fn text(status: StatusCode, body: impl Into<String>) -> Response<ChunksBody> {
    reply(status, "text/plain; charset=utf-8", body.into())
}

fn json(value: &serde_json::Value) -> Response<ChunksBody> {
    reply(StatusCode::OK, "application/json", value.to_string())
}

fn not_allowed(allow: &'static str) -> Response<ChunksBody> {
    let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "Method not allowed\n");
    r.headers_mut()
        .insert(header::ALLOW, header::HeaderValue::from_static(allow));
    r
}

/// Answers the renewal routes; `None` for any other path. `journal` is `None` when no
/// renewal rule is configured.
pub async fn route<B>(
    journal: Option<&RenewalJournal>,
    req: &Request<B>,
) -> Option<Response<ChunksBody>> {
    let path = req.uri().path();
    if path != LIST && path != CLEAR {
        return None;
    }
    let Some(journal) = journal.cloned() else {
        return Some(text(
            StatusCode::NOT_FOUND,
            "no renewal rule is configured\n",
        ));
    };
    Some(if path == LIST {
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return Some(not_allowed("GET, HEAD"));
        }
        list(journal).await
    } else {
        if req.method() != Method::POST {
            return Some(not_allowed("POST"));
        }
        let mut account = None;
        let mut vm = None;
        for (k, v) in url::form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes()) {
            match k.as_ref() {
                "account" => account = Some(v.into_owned()),
                "vm" => vm = Some(v.into_owned()),
                _ => {}
            }
        }
        match (account, vm) {
            (Some(a), Some(v)) => clear(journal, a, v).await,
            _ => text(
                StatusCode::BAD_REQUEST,
                "POST /api/v1/renewals/clear needs ?account=NAME&vm=ID\n",
            ),
        }
    })
}

async fn list(journal: RenewalJournal) -> Response<ChunksBody> {
    // With replicas the records are in etcd (any replica answers the same).
    let listed = if journal.is_shared() {
        Ok(journal.list().await)
    } else {
        tokio::task::spawn_blocking(move || journal.list_local().map_err(JournalError::from)).await
    };
    match listed {
        Ok(Ok(vms)) => json(&serde_json::json!({ "vms": vms })),
        Ok(Err(e)) => {
            tracing::error!(error = %e, "cannot read the renewal journal for /api/v1/renewals");
            text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "cannot read the renewal journal\n",
            )
        }
        Err(e) => {
            tracing::error!(error = %e, "renewal journal read task failed");
            text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "cannot read the renewal journal\n",
            )
        }
    }
}

async fn clear(journal: RenewalJournal, account: String, vm: String) -> Response<ChunksBody> {
    let (a, v) = (account.clone(), vm.clone());
    let done = if journal.is_shared() {
        // Any replica may receive it: the clear is written to etcd, where the owner finds it.
        let shared = async {
            let known = journal
                .list()
                .await?
                .iter()
                .any(|l| l.account == a && l.vm == v);
            if !known {
                return Ok(None);
            }
            journal
                .request_rearm(&a, &v, chrono::Utc::now())
                .await
                .map(Some)
        };
        Ok(shared.await)
    } else {
        tokio::task::spawn_blocking(move || {
            let known = journal
                .list_local()?
                .iter()
                .any(|l| l.account == a && l.vm == v);
            if !known {
                return Ok(None);
            }
            journal
                .request_rearm_local(&a, &v, chrono::Utc::now())
                .map(Some)
        })
        .await
        .map(|r: Result<_, crate::store::StoreError>| r.map_err(JournalError::from))
    };
    match done {
        Ok(Ok(Some(at))) => {
            tracing::info!(%account, %vm, "renewal clear requested through the API");
            json(&serde_json::json!({ "account": account, "vm": vm, "rearm_requested": at }))
        }
        Ok(Ok(None)) => text(
            StatusCode::NOT_FOUND,
            format!("no renewal record for VM {vm:?} of account {account:?}\n"),
        ),
        Ok(Err(e)) => {
            tracing::error!(error = %e, "cannot write the renewal journal");
            text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "cannot write the renewal journal\n",
            )
        }
        Err(e) => {
            tracing::error!(error = %e, "renewal journal write task failed");
            text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "cannot write the renewal journal\n",
            )
        }
    }
}
