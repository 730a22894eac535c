//! A real HTTP server on 127.0.0.1 standing in for the cloud platform: it
//! records every request it receives and answers as told.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};

/// One request as the upstream received it.
#[derive(Debug, Clone)]
pub struct Received {
    /// Method.
    pub method: String,
    /// Path.
    pub path: String,
    /// Query string.
    pub query: String,
    /// Headers, lower-case names.
    pub headers: Vec<(String, String)>,
    /// Body bytes as received.
    pub body: Vec<u8>,
}

impl Received {
    /// The value of a header.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// How the upstream answers.
#[derive(Debug, Clone)]
pub enum Behaviour {
    /// 200 `{"status":"success"}`.
    Succeed,
    /// This status with a JSON body.
    Fail(u16),
    /// Wait this long, then succeed.
    Stall(Duration),
    /// 200 with the request body as a JSON answer.
    Echo,
    /// 307 (method and body kept) to this URL.
    Redirect(String),
}

#[derive(Default)]
struct Shared {
    received: Mutex<Vec<Received>>,
    behaviour: Mutex<Option<Behaviour>>,
}

/// The running recorder. Stopped on drop.
pub struct Upstream {
    /// `http://127.0.0.1:PORT`
    pub url: String,
    shared: Arc<Shared>,
    handle: actix_web::dev::ServerHandle,
}

async fn record(
    shared: web::Data<Arc<Shared>>,
    req: HttpRequest,
    body: web::Bytes,
) -> HttpResponse {
    shared.received.lock().unwrap().push(Received {
        method: req.method().to_string(),
        path: req.path().to_owned(),
        query: req.query_string().to_owned(),
        headers: req
            .headers()
            .iter()
            .map(|(n, v)| {
                (
                    n.as_str().to_owned(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body: body.to_vec(),
    });
    let behaviour = shared
        .behaviour
        .lock()
        .unwrap()
        .clone()
        .unwrap_or(Behaviour::Succeed);
    match behaviour {
        Behaviour::Succeed => HttpResponse::Ok()
            .insert_header(("x-upstream", "recorder"))
            .json(serde_json::json!({"status": "success"})),
        Behaviour::Fail(code) => {
            HttpResponse::build(actix_web::http::StatusCode::from_u16(code).unwrap())
                .json(serde_json::json!({"status": "fail", "error": "upstream says no"}))
        }
        Behaviour::Echo => {
            let body = shared
                .received
                .lock()
                .unwrap()
                .last()
                .map(|r| r.body.clone())
                .unwrap_or_default();
            HttpResponse::Ok()
                .content_type("application/json")
                .body(body)
        }
        Behaviour::Redirect(to) => HttpResponse::TemporaryRedirect()
            .insert_header(("location", to))
            .json(serde_json::json!({"status": "moved"})),
        Behaviour::Stall(wait) => {
            actix_web::rt::time::sleep(wait).await;
            HttpResponse::Ok().json(serde_json::json!({"status": "late"}))
        }
    }
}

impl Upstream {
    /// Starts the recorder on 127.0.0.1:0.
    pub fn start() -> Self {
        Self::start_with(None)
    }

    /// Starts the recorder over HTTPS with a fresh self-signed certificate
    /// for `localhost`; returns it and the certificate (PEM) to trust.
    pub fn start_tls() -> (Self, String) {
        let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let cert = rustls::pki_types::CertificateDer::from(certified.cert.der().to_vec());
        let key =
            rustls::pki_types::PrivateKeyDer::try_from(certified.key_pair.serialize_der()).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .unwrap();
        let upstream = Self::start_with(Some(config));
        (upstream, certified.cert.pem())
    }

    fn start_with(tls: Option<rustls::ServerConfig>) -> Self {
        let shared = Arc::new(Shared::default());
        let (sender, receiver) = std::sync::mpsc::channel();
        let for_server = shared.clone();
        let tls_scheme = tls.is_some();
        std::thread::spawn(move || {
            actix_web::rt::System::new().block_on(async move {
                let data = web::Data::new(for_server);
                let server = HttpServer::new(move || {
                    App::new()
                        .app_data(data.clone())
                        .app_data(web::PayloadConfig::new(64 * 1024 * 1024))
                        .default_service(web::to(record))
                })
                .workers(2)
                .disable_signals();
                let server = match tls {
                    Some(config) => server.bind_rustls_0_23("127.0.0.1:0", config).unwrap(),
                    None => server.bind("127.0.0.1:0").unwrap(),
                };
                let address = server.addrs()[0];
                let server = server.run();
                sender.send((address, server.handle())).unwrap();
                let _ = server.await;
            });
        });
        let (address, handle) = receiver.recv().unwrap();
        let url = if tls_scheme {
            format!("https://localhost:{}", address.port())
        } else {
            format!("http://{address}")
        };
        Self {
            url,
            shared,
            handle,
        }
    }

    /// Changes how the next requests are answered.
    pub fn behave(&self, behaviour: Behaviour) {
        *self.shared.behaviour.lock().unwrap() = Some(behaviour);
    }

    /// Waits until `count` requests have arrived (not taking them).
    pub fn wait_for(&self, count: usize) {
        crate::support::eventually("the upstream received the requests", || {
            self.shared.received.lock().unwrap().len() >= count
        });
    }

    /// Everything received so far, and forgets it.
    pub fn take(&self) -> Vec<Received> {
        std::mem::take(&mut *self.shared.received.lock().unwrap())
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        let handle = self.handle.clone();
        std::thread::spawn(move || actix_web::rt::System::new().block_on(handle.stop(false)));
    }
}
