//! A token a client has seen always detokenizes, even after SIGKILL mid-load.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};

use crate::support::*;

#[test]
pub fn every_token_received_survives_sigkill() {
    let setup = Setup::new("");
    let mut server = setup.serve();
    let received: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..6)
        .map(|worker| {
            let (url, api_key, received, stop) = (
                server.url("/v1/tokenize"),
                key("crm"),
                received.clone(),
                stop.clone(),
            );
            std::thread::spawn(move || {
                let client = reqwest::blocking::Client::builder()
                    .timeout(Duration::from_secs(10))
                    .build()
                    .unwrap();
                for batch in 0.. {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    // Half deterministic (blind index path), half random.
                    let values: Vec<String> = (0..20)
                        .map(|i| format!("durable {worker}-{batch}-{i}"))
                        .collect();
                    let class = if batch % 2 == 0 { "name" } else { "note" };
                    let items: Vec<Value> = values
                        .iter()
                        .map(|v| json!({"class": class, "value": v}))
                        .collect();
                    let Ok(response) = client
                        .post(&url)
                        .bearer_auth(&api_key)
                        .json(&json!({"namespace": "retail", "items": items}))
                        .send()
                    else {
                        break;
                    };
                    let Ok(body) = response.json::<Value>() else {
                        break;
                    };
                    let Some(tokens) = body["tokens"].as_array() else {
                        break;
                    };
                    let mut received = received.lock().unwrap();
                    for (value, token) in values.into_iter().zip(tokens) {
                        received.push((token["token"].as_str().unwrap().to_owned(), value));
                    }
                }
            })
        })
        .collect();
    // Let the load build up, then kill the server without warning.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while received.lock().unwrap().len() < 600 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    server.kill();
    stop.store(true, Ordering::SeqCst);
    for worker in workers {
        worker.join().unwrap();
    }
    let received = received.lock().unwrap().clone();
    assert!(
        received.len() >= 600,
        "load too small to mean anything: {}",
        received.len()
    );

    let server = setup.serve();
    for chunk in received.chunks(1000) {
        let tokens: Vec<String> = chunk.iter().map(|(token, _)| token.clone()).collect();
        let values = detokenize(&server, "admin", "retail", "support", &tokens);
        for ((token, value), answer) in chunk.iter().zip(values) {
            assert_eq!(
                answer["value"].as_str(),
                Some(value.as_str()),
                "token {token} lost or wrong: {answer}"
            );
        }
    }
    // The audit chain survived the kill too (records beyond the head kept
    // in vault.db, from a commit cut between the two files, still chain).
    drop(server);
    assert_chain_verifies(&setup);
}
