//! `kata-monitor`: one HTTP endpoint for every sandbox on the host, as
//! upstream's. It finds the sandboxes by their shims' monitor sockets
//! (`/run/vc/sbs/<id>/shim-monitor.sock`, looked up on every request, so
//! nothing is cached that could go stale) and serves:
//! - `/metrics`: every shim's `/metrics`, merged by family, each sample
//!   with a `sandbox_id` label, after the monitor's own
//!   `kata_monitor_*` families; `?sandbox=ID`: that shim's body as is;
//! - `/sandboxes`: the sandbox ids, one per line;
//! - `/agent-url?sandbox=ID`: the shim's `/agent-url` and a newline;
//! - `/`: the list of endpoints.
//!
//! The shims' text is parsed with prometheus-parse and re-encoded with
//! prometheus-client, so that families of the same name from several
//! sandboxes come out as one family. Upstream also adds `cri_uid`,
//! `cri_name` and `cri_namespace` from the CRI; this monitor does not talk
//! to the CRI and adds only `sandbox_id`.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::shim::monitor::{self, Merged, SOCKET_NAME};

/// Upstream's default listen address.
pub const DEFAULT_LISTEN_ADDRESS: &str = "127.0.0.1:8090";
pub const OPENMETRICS_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const TEXT_TYPE: &str = "text/plain; charset=utf-8";

/// An answer: status, content type, body.
#[derive(Debug, PartialEq)]
pub struct Answer {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
}

impl Answer {
    fn text(status: u16, body: impl Into<String>) -> Answer {
        Answer {
            status,
            content_type: TEXT_TYPE,
            body: body.into(),
        }
    }
}

/// The monitor: where the sandboxes' sockets are, and its own counts.
pub struct Monitor {
    sandboxes_dir: PathBuf,
    scrapes: AtomicU64,
    failed_scrapes: AtomicU64,
}

impl Monitor {
    pub fn new(sandboxes_dir: impl Into<PathBuf>) -> Monitor {
        Monitor {
            sandboxes_dir: sandboxes_dir.into(),
            scrapes: AtomicU64::new(0),
            failed_scrapes: AtomicU64::new(0),
        }
    }

    /// The ids of the sandboxes whose shim has a monitor socket, sorted.
    pub fn sandboxes(&self) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(&self.sandboxes_dir) else {
            return Vec::new();
        };
        let mut ids: Vec<String> = entries
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|id| protocols::ids::check_id("sandbox id", id).is_ok())
            .filter(|id| self.sandboxes_dir.join(id).join(SOCKET_NAME).exists())
            .collect();
        ids.sort();
        ids
    }

    fn socket(&self, id: &str) -> PathBuf {
        monitor::socket_path(&self.sandboxes_dir, id)
    }

    /// The answer to a GET of `url` (path and query).
    pub fn respond(&self, url: &str) -> Answer {
        let (path, query) = url.split_once('?').unwrap_or((url, ""));
        let sandbox = form_urlencoded::parse(query.as_bytes())
            .find(|(k, _)| k == "sandbox")
            .map(|(_, v)| v.into_owned());
        match path {
            "/metrics" => match sandbox {
                Some(id) => self.shim_get(&id, "/metrics", 500).unwrap_or_else(|a| a),
                None => Answer {
                    status: 200,
                    content_type: OPENMETRICS_TYPE,
                    body: self.aggregate(),
                },
            },
            "/sandboxes" => {
                let mut body = self.sandboxes().join("\n");
                if !body.is_empty() {
                    body.push('\n');
                }
                Answer::text(200, body)
            }
            "/agent-url" => match sandbox {
                None => Answer::text(400, "no sandbox given: use /agent-url?sandbox=<id>\n"),
                Some(id) => match self.shim_get(&id, "/agent-url", 400) {
                    Ok(mut a) => {
                        a.body.push('\n');
                        a
                    }
                    Err(a) => a,
                },
            },
            "/" => Answer::text(
                200,
                "kata-monitor endpoints:\n\
                 /metrics               every sandbox's metrics, with a sandbox_id label\n\
                 /metrics?sandbox=ID    one sandbox's metrics, as its shim reports them\n\
                 /sandboxes             the running sandboxes' ids\n\
                 /agent-url?sandbox=ID  where that sandbox's agent listens\n",
            ),
            _ => Answer::text(404, format!("{path}: no such endpoint; see /\n")),
        }
    }

    /// GET `path` from sandbox `id`'s shim; `Err` is the answer to give
    /// instead (status `fail`), naming the sandbox and what went wrong.
    fn shim_get(&self, id: &str, path: &str, fail: u16) -> Result<Answer, Answer> {
        if let Err(e) = protocols::ids::check_id("sandbox id", id) {
            return Err(Answer::text(400, format!("{e}\n")));
        }
        let socket = self.socket(id);
        if !socket.exists() {
            return Err(Answer::text(
                fail,
                format!(
                    "sandbox {id} not found in {}: it may be stopped or deleted; see /sandboxes\n",
                    self.sandboxes_dir.display()
                ),
            ));
        }
        match monitor::get(&socket, path) {
            Ok((200, body)) => Ok(Answer {
                status: 200,
                content_type: if path == "/metrics" {
                    OPENMETRICS_TYPE
                } else {
                    TEXT_TYPE
                },
                body,
            }),
            Ok((status, body)) => Err(Answer::text(
                fail,
                format!(
                    "sandbox {id}: its shim answered {path} with {status}: {}\n",
                    body.trim()
                ),
            )),
            Err(e) => Err(Answer::text(fail, format!("sandbox {id}: {e}\n"))),
        }
    }

    /// Every shim's metrics merged, each sample labelled with its sandbox;
    /// a shim that fails is left out (and counted), as upstream does.
    pub fn aggregate(&self) -> String {
        let mut scraped = Vec::new();
        let ids = self.sandboxes();
        for id in &ids {
            self.scrapes.fetch_add(1, Ordering::Relaxed);
            match monitor::get(&self.socket(id), "/metrics") {
                Ok((200, body)) => scraped.push((id.clone(), body)),
                Ok((status, _)) => {
                    self.failed_scrapes.fetch_add(1, Ordering::Relaxed);
                    eprintln!("kata-monitor: sandbox {id}: /metrics answered {status}");
                }
                Err(e) => {
                    self.failed_scrapes.fetch_add(1, Ordering::Relaxed);
                    eprintln!("kata-monitor: sandbox {id}: {e}");
                }
            }
        }
        let own = OwnFigures {
            running_shims: ids.len() as u64,
            scrapes: self.scrapes.load(Ordering::Relaxed),
            failed_scrapes: self.failed_scrapes.load(Ordering::Relaxed),
        };
        merge(&scraped, &own)
    }
}

/// The monitor's own figures.
pub struct OwnFigures {
    pub running_shims: u64,
    pub scrapes: u64,
    pub failed_scrapes: u64,
}

/// The exposition of `own` and of the shims' bodies `(sandbox id, text)`:
/// families by name, a `sandbox_id` label on every sample.
pub fn merge(scraped: &[(String, String)], own: &OwnFigures) -> String {
    let mut registry = Registry::default();
    let running = Gauge::<i64>::default();
    running.set(own.running_shims as i64);
    registry.register(
        "kata_monitor_running_shim_count",
        "Running shims (sandboxes with a monitor socket)",
        running,
    );
    let scrapes = Counter::<u64>::default();
    scrapes.inc_by(own.scrapes);
    registry.register("kata_monitor_scrape_count", "Shim scrapes", scrapes);
    let failed = Counter::<u64>::default();
    failed.inc_by(own.failed_scrapes);
    registry.register(
        "kata_monitor_scrape_failed_count",
        "Shim scrapes that failed",
        failed,
    );
    let mut merged = Merged::default();
    for (sandbox, body) in scraped {
        merged.add(body, &[("sandbox_id", sandbox)]);
    }
    merged.register(&mut registry);
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = encode(&mut out, &registry);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shim::monitor::{MonitorServer, Monitored};

    fn own() -> OwnFigures {
        OwnFigures {
            running_shims: 2,
            scrapes: 4,
            failed_scrapes: 1,
        }
    }

    #[test]
    fn families_of_several_sandboxes_merge_under_one_name_with_their_ids() {
        let a = "# HELP kata_shim_threads Threads of the shim.\n# TYPE kata_shim_threads gauge\nkata_shim_threads 3\n\
                 # HELP kata_shim_io_stat io.\n# TYPE kata_shim_io_stat gauge\nkata_shim_io_stat{item=\"rchar\"} 10\n# EOF\n";
        let b = "# HELP kata_shim_threads Threads of the shim.\n# TYPE kata_shim_threads gauge\nkata_shim_threads 5\n# EOF\n";
        let text = merge(&[("sa".into(), a.into()), ("sb".into(), b.into())], &own());
        assert_eq!(
            text.matches("# TYPE kata_shim_threads gauge").count(),
            1,
            "{text}"
        );
        assert!(
            text.contains("kata_shim_threads{sandbox_id=\"sa\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("kata_shim_threads{sandbox_id=\"sb\"} 5"),
            "{text}"
        );
        assert!(
            text.contains("kata_shim_io_stat{item=\"rchar\",sandbox_id=\"sa\"} 10"),
            "{text}"
        );
        assert!(
            text.contains("# HELP kata_shim_threads Threads of the shim.\n"),
            "{text}"
        );
        assert!(text.contains("kata_monitor_running_shim_count 2"), "{text}");
        assert!(text.contains("kata_monitor_scrape_count_total 4"), "{text}");
        assert!(
            text.contains("kata_monitor_scrape_failed_count_total 1"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn endpoints_over_real_shim_sockets() {
        let root = tempfile::tempdir().unwrap();
        let me = std::process::id();
        let serve = |id: &str| {
            MonitorServer::start(
                root.path(),
                id,
                Monitored {
                    agent_url: format!("hvsock:///run/kata-containers/{id}/vsock.sock:1024"),
                    hypervisor: Some(me),
                    ..Default::default()
                },
            )
            .unwrap()
        };
        let (s1, s2) = (serve("pod-a"), serve("pod-b"));
        // Not a sandbox: a directory without a socket, a bad name.
        std::fs::create_dir(root.path().join("stale")).unwrap();
        std::fs::create_dir(root.path().join(".hidden")).unwrap();
        let m = Monitor::new(root.path());

        assert_eq!(m.respond("/sandboxes").body, "pod-a\npod-b\n");
        let all = m.respond("/metrics");
        assert_eq!((all.status, all.content_type), (200, OPENMETRICS_TYPE));
        for id in ["pod-a", "pod-b"] {
            assert!(
                all.body
                    .contains(&format!("kata_hypervisor_threads{{sandbox_id=\"{id}\"}}")),
                "{}",
                all.body
            );
        }
        assert!(all.body.contains("kata_monitor_running_shim_count 2"));
        let one = m.respond("/metrics?sandbox=pod-b");
        assert_eq!(one.status, 200);
        assert!(one.body.contains("kata_shim_threads "), "{}", one.body);
        assert!(!one.body.contains("sandbox_id"));

        let url = m.respond("/agent-url?sandbox=pod-a");
        assert_eq!(
            url,
            Answer::text(200, "hvsock:///run/kata-containers/pod-a/vsock.sock:1024\n")
        );
        assert_eq!(m.respond("/agent-url").status, 400);
        let gone = m.respond("/agent-url?sandbox=stale");
        assert_eq!(gone.status, 400);
        assert!(
            gone.body.contains("sandbox stale not found"),
            "{}",
            gone.body
        );
        let bad = m.respond("/metrics?sandbox=..%2Fx");
        assert_eq!(bad.status, 400);
        assert_eq!(m.respond("/metrics?sandbox=stale").status, 500);
        assert_eq!(m.respond("/nope").status, 404);
        assert!(m.respond("/").body.contains("/agent-url?sandbox=ID"));

        drop(s1);
        assert_eq!(m.respond("/sandboxes").body, "pod-b\n");
        drop(s2);
        assert_eq!(m.respond("/sandboxes").body, "");
        assert!(m
            .respond("/metrics")
            .body
            .contains("kata_monitor_running_shim_count 0"));
    }
}
