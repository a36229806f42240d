//! One fake OpenAI-compatible server for the tests: it listens on loopback, reads each request whole
//! (one per connection, each on a thread of its own), records it as sent and answers as the test
//! says. It produces what a real provider gives only sometimes (429, 5xx, hangs, echoed keys) and
//! shows what Sluice sends, byte for byte.

#![allow(dead_code)]

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value as Json, json};

/// One request as the server read it.
#[derive(Clone, Debug)]
pub struct Seen {
    /// Its place among the requests the server received, from 0.
    pub n: usize,
    /// The request line and headers, as sent.
    pub head: String,
    /// The body as sent (numbers as written).
    pub body: String,
}

impl Seen {
    /// `POST /v1/chat/completions HTTP/1.1`
    pub fn request_line(&self) -> &str {
        self.head.lines().next().unwrap_or_default()
    }

    /// A header's value, the name compared without case.
    pub fn header(&self, name: &str) -> Option<String> {
        self.head.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_owned())
        })
    }

    /// The body as JSON.
    pub fn json(&self) -> Json {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("the body is not JSON ({e}): {}", self.body))
    }

    /// The content of the last message of a chat request.
    pub fn last_message(&self) -> String {
        self.json()["messages"]
            .as_array()
            .and_then(|m| m.last())
            .and_then(|m| m["content"].as_str())
            .unwrap_or_default()
            .to_owned()
    }
}

/// What the server answers to one request.
pub struct Reply {
    status: u16,
    content_type: &'static str,
    headers: String,
    body: String,
    delay: Duration,
}

impl Reply {
    /// 200 with a JSON body.
    pub fn json(body: impl Into<String>) -> Reply {
        Reply::status(200, body)
    }

    /// `status` with a JSON body.
    pub fn status(status: u16, body: impl Into<String>) -> Reply {
        Reply {
            status,
            content_type: "application/json",
            headers: String::new(),
            body: body.into(),
            delay: Duration::ZERO,
        }
    }

    /// 200 with server-sent events (`data: ...\n\n` each).
    pub fn events(body: impl Into<String>) -> Reply {
        Reply {
            content_type: "text/event-stream",
            ..Reply::json(body)
        }
    }

    /// The same with one more header.
    pub fn header(mut self, name: &str, value: &str) -> Reply {
        self.headers.push_str(&format!("{name}: {value}\r\n"));
        self
    }

    /// The same, sent only after `delay`.
    pub fn after(mut self, delay: Duration) -> Reply {
        self.delay = delay;
        self
    }

    /// Writes the reply and closes the connection.
    pub fn send(&self, sock: &mut TcpStream) {
        std::thread::sleep(self.delay);
        self.write(sock);
    }

    fn write(&self, sock: &mut TcpStream) {
        let _ = write!(
            sock,
            "HTTP/1.1 {} X\r\ncontent-type: {}\r\ncontent-length: {}\r\nconnection: close\r\n{}\r\n{}",
            self.status,
            self.content_type,
            self.body.len(),
            self.headers,
            self.body
        );
        let _ = sock.flush();
    }
}

/// The fake server; it lives as long as the test process.
pub struct FakeServer {
    /// `http://127.0.0.1:PORT`
    pub origin: String,
    /// `http://127.0.0.1:PORT/v1`, an OpenAI connection's `api_base`.
    pub base: String,
    seen: Arc<Mutex<Vec<Seen>>>,
    max_in_flight: Arc<AtomicUsize>,
}

impl FakeServer {
    /// Answers each request with what `answer` makes of it.
    /// A request counts as in flight from when it is read until its reply starts.
    pub fn start(answer: impl Fn(&Seen) -> Reply + Send + Sync + 'static) -> FakeServer {
        FakeServer::listen(move |seen, sock, in_flight| {
            let reply = answer(seen);
            std::thread::sleep(reply.delay);
            in_flight.fetch_sub(1, Ordering::SeqCst);
            reply.write(sock);
        })
    }

    /// Answers every request with 200 and the JSON `body`.
    pub fn replying(body: String) -> FakeServer {
        FakeServer::start(move |_| Reply::json(body.clone()))
    }

    /// Lets `answer` write whatever it likes on the socket.
    pub fn raw(answer: impl Fn(&Seen, &mut TcpStream) + Send + Sync + 'static) -> FakeServer {
        FakeServer::listen(move |seen, sock, in_flight| {
            answer(seen, sock);
            in_flight.fetch_sub(1, Ordering::SeqCst);
        })
    }

    /// Serves each request on a thread of its own; `answer` ends the request's time in flight.
    fn listen(
        answer: impl Fn(&Seen, &mut TcpStream, &AtomicUsize) + Send + Sync + 'static,
    ) -> FakeServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let origin = format!("http://{}", listener.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let max_in_flight = Arc::new(AtomicUsize::new(0));
        let in_flight = Arc::new(AtomicUsize::new(0));
        let answer = Arc::new(answer);
        let (record, max) = (seen.clone(), max_in_flight.clone());
        let arrived = Arc::new(AtomicUsize::new(0));
        std::thread::Builder::new()
            .name("fake-server".into())
            .spawn(move || {
                for sock in listener.incoming() {
                    let Ok(mut sock) = sock else { continue };
                    let (answer, record, max, in_flight, arrived) = (
                        answer.clone(),
                        record.clone(),
                        max.clone(),
                        in_flight.clone(),
                        arrived.clone(),
                    );
                    std::thread::Builder::new()
                        .name("fake-conn".into())
                        .spawn(move || {
                            let Some((head, body)) = crate::common::read_request(&mut sock) else {
                                return;
                            };
                            let seen = Seen {
                                n: arrived.fetch_add(1, Ordering::SeqCst),
                                head,
                                body: String::from_utf8_lossy(&body).into_owned(),
                            };
                            record.lock().unwrap().push(seen.clone());
                            let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                            max.fetch_max(now, Ordering::SeqCst);
                            answer(&seen, &mut sock, &in_flight);
                        })
                        .unwrap();
                }
            })
            .unwrap();
        FakeServer {
            base: format!("{origin}/v1"),
            origin,
            seen,
            max_in_flight,
        }
    }

    /// The requests received so far, in the order they arrived.
    pub fn seen(&self) -> Vec<Seen> {
        let mut seen = self.seen.lock().unwrap().clone();
        seen.sort_by_key(|s| s.n);
        seen
    }

    /// How many requests arrived.
    pub fn requests(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    /// The most requests that were being answered at once.
    pub fn max_in_flight(&self) -> usize {
        self.max_in_flight.load(Ordering::SeqCst)
    }

    /// The JSON body of the one request whose first line contains `path`.
    pub fn request_to(&self, path: &str) -> Json {
        let seen = self.seen();
        let found: Vec<&Seen> = seen
            .iter()
            .filter(|s| s.request_line().contains(path))
            .collect();
        assert_eq!(found.len(), 1, "{path}: {seen:?}");
        found[0].json()
    }

    /// The JSON body of the one request for the model `model`.
    pub fn request_for(&self, model: &str) -> Json {
        let bodies: Vec<Json> = self
            .seen()
            .iter()
            .map(Seen::json)
            .filter(|b| b["model"] == model)
            .collect();
        assert_eq!(bodies.len(), 1, "{model}: {bodies:?}");
        bodies.into_iter().next().unwrap()
    }

    /// The bodies received, as sent.
    pub fn bodies(&self) -> Vec<String> {
        self.seen().into_iter().map(|s| s.body).collect()
    }
}

/// A reply a chat and a completion request both read as `text`, with token counts.
pub fn ok_body(text: &str) -> String {
    json!({"id": "x", "object": "chat.completion", "model": "m",
           "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "text": text,
                        "finish_reason": "stop"}],
           "usage": {"prompt_tokens": 7, "completion_tokens": 2, "total_tokens": 9}})
    .to_string()
}

/// Answers a chat or completion request with as many choices as its `n` asks (1 when absent):
/// choice `i` says `"{text} {i}"`. A request with `stream: true` gets the choices' chunks
/// interleaved, as OpenAI sends them, in two pieces each (`"{text}"`, `" {i}"`).
pub fn n_choices(seen: &Seen, text: &str) -> Reply {
    let body = seen.json();
    let chat = body.get("messages").is_some();
    let n = body["n"].as_u64().unwrap_or(1);
    let say = |i: u64| format!("{text} {i}");
    if body["stream"] == true {
        let chunk = |i: u64, piece: &str| {
            let choice = if chat {
                json!({"index": i, "delta": {"content": piece}, "finish_reason": null})
            } else {
                json!({"index": i, "text": piece, "finish_reason": null})
            };
            format!("data: {}\n\n", json!({"choices": [choice]}))
        };
        let mut events = String::new();
        for piece in [text.to_owned(), String::new()] {
            for i in 0..n {
                let piece = if piece.is_empty() {
                    format!(" {i}")
                } else {
                    piece.clone()
                };
                events.push_str(&chunk(i, &piece));
            }
        }
        events.push_str("data: [DONE]\n\n");
        return Reply::events(events);
    }
    let choices: Vec<Json> = (0..n)
        .map(|i| {
            if chat {
                json!({"index": i, "message": {"role": "assistant", "content": say(i)},
                       "finish_reason": "stop"})
            } else {
                json!({"index": i, "text": say(i), "finish_reason": "stop"})
            }
        })
        .collect();
    Reply::json(
        json!({"id": "x", "object": if chat { "chat.completion" } else { "text_completion" },
               "model": "m", "choices": choices,
               "usage": {"prompt_tokens": 7, "completion_tokens": 2 * n, "total_tokens": 7 + 2 * n}})
        .to_string(),
    )
}
