//! How a service that links the read API (`score_worker::read`) lets itself be watched: one
//! `Metrics`, the `Reader` built with it, and `GET /metrics` served from `Metrics::encode` — the
//! read API's series (`score_worker_read_duration_seconds{operation}`,
//! `score_worker_read_errors_total{operation, kind}`, `score_worker_eligibility_cache_requests_total`)
//! then come from that service's own scrape job. So that a scrape has something to show, this one
//! calls every operation on one leaderboard in a loop.
//!
//! ```text
//! cargo run --example read_service -- 127.0.0.1:9103 LEADERBOARD
//! ```
//!
//! The database comes from the worker's configuration (`config/default.toml`, `SCORE_WORKER__SCYLLA__*`).
//! `make deploy-check` runs it beside a worker and has Prometheus scrape both
//! (`scripts/check-dashboards-live.sh`).

use std::sync::Arc;
use std::time::Duration;

use axum::routing::get;
use score_worker::config::Config;
use score_worker::metrics::{Metrics, CONTENT_TYPE};
use score_worker::read::Reader;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let listen = args.next().unwrap_or_else(|| "127.0.0.1:9103".into());
    let board = args
        .next()
        .ok_or("usage: read_service LISTEN LEADERBOARD")?;
    let config = Config::load(None)?;
    let session = Arc::new(score_worker::store::connect(&config.scylla).await?);
    let metrics = Arc::new(Metrics::new());
    let reader = Reader::new(session, &config.scylla, metrics.clone()).await?;

    let scrape = metrics.clone();
    let router = axum::Router::new().route(
        "/metrics",
        get(move || async move { ([("content-type", CONTENT_TYPE)], scrape.encode()) }),
    );
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    tokio::spawn(async move { axum::serve(listener, router).await });

    loop {
        if let Err(e) = read_everything(&reader, &board).await {
            eprintln!("read failed: {e}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One call of each operation, on the board's first row.
async fn read_everything(reader: &Reader, board: &str) -> Result<(), Box<dyn std::error::Error>> {
    let top = reader.top(board, 10).await?;
    let Some(first) = top.entries.first() else {
        return Ok(());
    };
    reader.page_after(board, first.cursor(), 10).await?;
    reader.rank(board, first.profile_id).await?;
    reader.scores(first.profile_id).await?;
    reader.by_wallet(&first.wallet_address).await?;
    reader.score_on(first.profile_id, board).await?;
    let now = chrono::Utc::now();
    let day = chrono::Duration::days(1);
    reader
        .history(first.profile_id, now - day, now, 10, None)
        .await?;
    reader
        .eligibility(&first.wallet_address, board, first.score)
        .await?;
    Ok(())
}
