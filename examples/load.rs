//! Many small uploads and downstream reads at once, against a running service.
//!
//! `cargo run --release --example load -- BASE UPLOAD_TOKEN READ_TOKEN CLIENTS FILES_PER_CLIENT FILE_BYTES`
//! The upload token's subject needs an active consent for data category `documents`.

use std::time::{Duration, Instant};

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize].as_secs_f64() * 1000.0
}

async fn run<F, Fut>(clients: usize, per_client: usize, job: F) -> (f64, Vec<Duration>)
where
    F: Fn(usize) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    let started = Instant::now();
    let tasks = (0..clients).map(|c| {
        let job = job.clone();
        tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(per_client);
            for i in 0..per_client {
                let t = Instant::now();
                job(c * per_client + i).await;
                latencies.push(t.elapsed());
            }
            latencies
        })
    });
    let mut all: Vec<Duration> = futures::future::join_all(tasks)
        .await
        .into_iter()
        .flat_map(Result::unwrap)
        .collect();
    all.sort();
    (started.elapsed().as_secs_f64(), all)
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (base, upload_token, read_token) = (args[1].clone(), args[2].clone(), args[3].clone());
    let (clients, per_client, size): (usize, usize, usize) = (
        args[4].parse().unwrap(),
        args[5].parse().unwrap(),
        args[6].parse().unwrap(),
    );
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(clients)
        .build()
        .unwrap();
    let body = bytes::Bytes::from(vec![b'a'; size]);
    let ids = std::sync::Arc::new(std::sync::Mutex::new(vec![String::new(); clients * per_client]));

    let (upload_secs, upload_lat) = {
        let (http, base, token, body, ids) = (
            http.clone(),
            base.clone(),
            upload_token.clone(),
            body.clone(),
            ids.clone(),
        );
        run(clients, per_client, move |n| {
            let (http, base, token, body, ids) = (http.clone(), base.clone(), token.clone(), body.clone(), ids.clone());
            async move {
                let response = http
                    .post(format!("{base}/v1/packages?data_category=documents&filename=f{n}.txt"))
                    .bearer_auth(&token)
                    .header("content-type", "text/plain")
                    .body(body)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status(), 201);
                let package: serde_json::Value = response.json().await.unwrap();
                ids.lock().unwrap()[n] = package["id"].as_str().unwrap().to_owned();
            }
        })
        .await
    };
    let (read_secs, read_lat) = {
        let (http, base, token, ids) = (http.clone(), base.clone(), read_token.clone(), ids.clone());
        run(clients, per_client, move |n| {
            let (http, base, token, ids) = (http.clone(), base.clone(), token.clone(), ids.clone());
            async move {
                let id = ids.lock().unwrap()[n].clone();
                let response = http
                    .get(format!("{base}/v1/packages/{id}/content?purpose=model-training"))
                    .bearer_auth(&token)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status(), 200);
                assert_eq!(response.bytes().await.unwrap().len(), size);
            }
        })
        .await
    };
    let total = (clients * per_client) as f64;
    println!(
        "{}",
        serde_json::json!({
            "clients": clients,
            "files": clients * per_client,
            "file_bytes": size,
            "uploads_per_second": (total / upload_secs).round(),
            "upload_mb_per_s": (total * size as f64 / upload_secs / 1e6 * 10.0).round() / 10.0,
            "upload_p50_ms": percentile(&upload_lat, 0.5),
            "upload_p99_ms": percentile(&upload_lat, 0.99),
            "reads_per_second": (total / read_secs).round(),
            "read_mb_per_s": (total * size as f64 / read_secs / 1e6 * 10.0).round() / 10.0,
            "read_p50_ms": percentile(&read_lat, 0.5),
            "read_p99_ms": percentile(&read_lat, 0.99),
        })
    );
}
