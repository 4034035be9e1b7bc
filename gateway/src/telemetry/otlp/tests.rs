use super::transport::PostFuture;
use super::*;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use prost::Message;
use std::sync::Mutex;
use std::time::Instant;

/// Bodies the fake collector received, by signal.
type Posts = Arc<Mutex<Vec<(Signal, Vec<u8>)>>>;

/// A collector in memory: remembers bodies, fails while `down`, or hangs until released.
#[derive(Clone, Default)]
struct Fake {
    posts: Posts,
    down: Arc<std::sync::atomic::AtomicBool>,
    gate: Option<Arc<tokio::sync::Semaphore>>,
}

impl Transport for Fake {
    fn post(&self, signal: Signal, body: Vec<u8>) -> PostFuture<'_> {
        Box::pin(async move {
            if let Some(g) = &self.gate {
                let _ = g.acquire().await.map(|p| p.forget());
            }
            if self.down.load(Ordering::Relaxed) {
                return Err(OtlpError::Request("connection refused".into()));
            }
            self.posts.lock().unwrap().push((signal, body));
            Ok(())
        })
    }
}

impl Fake {
    fn log_counts(&self) -> Vec<usize> {
        self.posts
            .lock()
            .unwrap()
            .iter()
            .filter(|(s, _)| *s == Signal::Logs)
            .map(|(_, b)| {
                let req = ExportLogsServiceRequest::decode(b.as_slice()).unwrap();
                req.resource_logs[0].scope_logs[0].log_records.len()
            })
            .collect()
    }
}

fn rec(i: usize) -> AccessRecord {
    let mut r = AccessRecord::new(format!("req-{i}"), "GET", "/");
    r.status = 200;
    r
}

fn opts(batch: usize, queue: usize, interval: Duration) -> OtlpOptions {
    OtlpOptions {
        batch,
        queue,
        interval,
        ..OtlpOptions::new("http://127.0.0.1:4318")
    }
}

#[tokio::test]
async fn full_batches_go_out_without_waiting_for_the_timer() {
    let fake = Fake::default();
    let exp =
        OtlpExporter::with_transport(opts(4, 64, Duration::from_secs(3600)), fake.clone()).unwrap();
    for i in 0..10 {
        exp.record(&rec(i));
    }
    // Two full batches leave at once; the last two wait for the timer or a flush.
    for _ in 0..100 {
        if fake.log_counts().len() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(fake.log_counts(), vec![4, 4]);
    assert!(exp.flush(Duration::from_secs(5)).await);
    assert_eq!(fake.log_counts(), vec![4, 4, 2]);
    assert_eq!(
        exp.stats(),
        OtlpStats {
            exported: 10,
            dropped: 0,
            failed: 0
        }
    );
    let traces = fake
        .posts
        .lock()
        .unwrap()
        .iter()
        .filter(|(s, _)| *s == Signal::Traces)
        .count();
    assert_eq!(traces, 3);
}

#[tokio::test]
async fn partial_batches_leave_on_the_timer() {
    let fake = Fake::default();
    let exp = OtlpExporter::with_transport(opts(512, 64, Duration::from_millis(50)), fake.clone())
        .unwrap();
    exp.record(&rec(1));
    for _ in 0..200 {
        if exp.stats().exported == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(fake.log_counts(), vec![1]);
}

#[tokio::test]
async fn full_queue_drops_and_counts_without_blocking() {
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let fake = Fake {
        gate: Some(gate.clone()),
        ..Fake::default()
    };
    let exp =
        OtlpExporter::with_transport(opts(8, 16, Duration::from_millis(10)), fake.clone()).unwrap();
    let start = Instant::now();
    for i in 0..1000 {
        exp.record(&rec(i));
    }
    assert!(start.elapsed() < Duration::from_secs(1), "record() blocked");
    // At most the queue plus one batch are held while the collector hangs.
    let dropped = exp.stats().dropped;
    assert!(dropped >= 1000 - 16 - 8, "dropped {dropped}");
    gate.add_permits(1000);
    assert!(exp.flush(Duration::from_secs(5)).await);
    let s = exp.stats();
    assert_eq!(s.exported + s.dropped, 1000, "{s:?}");
    assert_eq!(s.failed, 0);
}

#[tokio::test]
async fn failed_exports_are_counted_and_back_off() {
    let fake = Fake::default();
    fake.down.store(true, Ordering::Relaxed);
    let exp =
        OtlpExporter::with_transport(opts(2, 64, Duration::from_millis(10)), fake.clone()).unwrap();
    for i in 0..6 {
        exp.record(&rec(i));
    }
    // The first batch fails; the next waits out the backoff (1 s) instead of hammering.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(exp.stats().failed, 2, "{:?}", exp.stats());
    fake.down.store(false, Ordering::Relaxed);
    assert!(exp.flush(Duration::from_secs(5)).await);
    let s = exp.stats();
    assert_eq!((s.exported, s.failed, s.dropped), (4, 2, 0), "{s:?}");
}

#[tokio::test]
async fn flush_times_out_when_the_collector_hangs() {
    let fake = Fake {
        gate: Some(Arc::new(tokio::sync::Semaphore::new(0))),
        ..Fake::default()
    };
    let exp =
        OtlpExporter::with_transport(opts(8, 16, Duration::from_secs(60)), fake.clone()).unwrap();
    exp.record(&rec(1));
    let start = Instant::now();
    assert!(!exp.flush(Duration::from_millis(100)).await);
    assert!(start.elapsed() < Duration::from_secs(2));
}

#[test]
fn start_needs_a_runtime() {
    assert!(matches!(
        OtlpExporter::with_transport(opts(1, 1, Duration::from_secs(1)), Fake::default()),
        Err(OtlpError::NoRuntime)
    ));
}

#[test]
fn endpoints_and_headers_are_validated() {
    assert_eq!(
        validate_endpoint("http://collector:4318/").unwrap(),
        "http://collector:4318"
    );
    assert_eq!(
        validate_endpoint("https://otlp.example.com/prefix").unwrap(),
        "https://otlp.example.com/prefix"
    );
    assert!(matches!(
        validate_endpoint("grpc://x:4317"),
        Err(OtlpError::Endpoint(..))
    ));
    assert!(validate_endpoint("collector:4318").is_err());
    assert!(validate_endpoint("http://c:4318/?a=b").is_err());

    let (k, v) = parse_header("Authorization=Bearer abc=def").unwrap();
    assert_eq!(k, "authorization");
    assert_eq!(v, "Bearer abc=def");
    assert!(v.is_sensitive());
    assert!(matches!(parse_header("novalue"), Err(OtlpError::Header(_))));
    let err = parse_header("bad name=secret").unwrap_err().to_string();
    assert!(!err.contains("secret"), "{err}");
}
