//! Analysis of an upload while its bytes arrive, so a large file's receipt does not wait for
//! a second read of the whole file after its last byte.
//!
//! Ingest must check a file completely before answering CLOSE (invariants 1 and 4): content
//! SHA-256, seal MAC and unprotected characters, payload digest, recognition and structure.
//! Read back after CLOSE, that costs ~1 s per GiB on top of the transfer. Every client
//! measured writes strictly in order, so the same passes can run on the bytes as they are
//! written: each pass is a thread reading the upload's bytes from a bounded channel (the
//! writer blocks when a pass falls behind, which slows the sender through SFTP flow control
//! rather than buffering without limit).
//!
//! The passes see exactly the bytes written to the spool file, in file order: the first
//! `prefix` bytes (written before the analysis started) are read from the file itself, then
//! every chunk is fed right after it was written at the next offset. Any write elsewhere
//! (a rewrite, a gap, a resumed upload) stops the analysis; [`Live::finish`] then returns
//! `None` and ingest reads the file back as for any other file. The result is used only when
//! the fed bytes end exactly at the file's final size.
//!
//! It must never decide anything itself: it produces the same [`Passes`] that reading the
//! file back would, and ingest judges them.

use super::ingest::{Passes, SealPass, seal_pass};
use crate::formats;
use crate::seal::SealKey;
use bytes::Bytes;
use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::{self, BufRead, Read};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;

/// Uploads smaller than this are read back after CLOSE (from the page cache, in well under
/// a millisecond): three threads per file would cost more than they save.
pub const LIVE_THRESHOLD: u64 = 4 * 1024 * 1024;
/// Chunks are handed to the passes in batches of about this many bytes: one channel send
/// and at most one thread wake-up per batch and pass rather than per client WRITE (32 KiB
/// from OpenSSH: 32 768 per GiB).
const BATCH_BYTES: usize = 1024 * 1024;
/// Batches a pass may lag behind the writer (bounds the memory a slow pass can pin).
const CHANNEL_BATCHES: usize = 8;
/// Analyses running at once across all sessions; beyond this, uploads are read back after
/// CLOSE (correct, only later). Bounds the threads a burst of large uploads can start.
pub const MAX_LIVE: usize = 8;

static RUNNING: AtomicUsize = AtomicUsize::new(0);

/// An analysis in progress, owned by the upload's writer.
pub struct Live {
    feeds: Vec<SyncSender<Batch>>,
    /// Chunks written but not yet handed to the passes.
    pending: Vec<Bytes>,
    pending_bytes: usize,
    abort: Arc<AtomicBool>,
    passes: Option<Threads>,
    /// File offset the next fed chunk must start at.
    next: u64,
    broken: bool,
}

struct Threads {
    sha: JoinHandle<io::Result<[u8; 32]>>,
    rec: JoinHandle<io::Result<formats::Recognition>>,
    seal: JoinHandle<io::Result<SealPass>>,
}

/// Chunks handed to every pass at once.
type Batch = Arc<Vec<Bytes>>;

/// What an inbound adapter already knows about an upload it hands to ingest.
pub struct Analysed {
    /// SHA-256 of the whole file, lower-case hex.
    pub sha256: String,
    /// The analysis passes, when they ran as the bytes arrived; `None`: ingest reads back.
    pub passes: Option<Passes>,
}

impl Live {
    /// Start analysing the upload at `path` whose first `prefix` bytes are already written.
    /// `None` when [`MAX_LIVE`] analyses are running (the upload is then read back at CLOSE)
    /// or a thread could not be started.
    pub fn start(path: &Path, prefix: u64, keys: &[SealKey]) -> Option<Live> {
        if RUNNING.fetch_add(1, Ordering::AcqRel) >= MAX_LIVE {
            RUNNING.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        let abort = Arc::new(AtomicBool::new(false));
        let mut feeds = Vec::new();
        let mut spawn_feed = || -> io::Result<Feed> {
            let (tx, rx) = sync_channel(CHANNEL_BATCHES);
            feeds.push(tx);
            Ok(Feed {
                prefix: File::open(path)?.take(prefix),
                rx,
                batch: Batch::default(),
                next_in_batch: 0,
                cur: Bytes::new(),
                abort: abort.clone(),
            })
        };
        let started = (|| -> io::Result<Threads> {
            let f = spawn_feed()?;
            let sha = spawn("sluss-live-sha", move || {
                let mut f = f;
                let mut h = Sha256::new();
                loop {
                    let buf = f.fill_buf()?;
                    if buf.is_empty() {
                        break;
                    }
                    h.update(buf);
                    let n = buf.len();
                    f.consume(n);
                }
                Ok(h.finalize().into())
            })?;
            let f = spawn_feed()?;
            let rec = spawn("sluss-live-rec", move || formats::recognise(f))?;
            let f = spawn_feed()?;
            let keys = keys.to_vec();
            // Seal and payload digest in one thread, as in the read-back: they share the
            // line scan, and threads beyond the machine's cores would only repeat it.
            let seal = spawn("sluss-live-seal", move || seal_pass(&keys, f))?;
            Ok(Threads { sha, rec, seal })
        })();
        let mut live = Live {
            feeds,
            pending: Vec::new(),
            pending_bytes: 0,
            abort,
            passes: None,
            next: prefix,
            broken: false,
        };
        match started {
            Ok(t) => {
                live.passes = Some(t);
                Some(live)
            }
            Err(e) => {
                tracing::warn!(
                    "could not start analysing an upload as it arrives ({e}); it will be read back after CLOSE"
                );
                live.stop();
                None
            }
        }
    }

    /// Offer the chunk just written at `offset`. Anything but the next bytes in order stops
    /// the analysis for good.
    pub fn feed(&mut self, offset: u64, data: &Bytes) {
        if self.broken {
            return;
        }
        if offset != self.next {
            self.stop();
            return;
        }
        self.next += data.len() as u64;
        self.pending_bytes += data.len();
        self.pending.push(data.clone());
        if self.pending_bytes >= BATCH_BYTES {
            self.send_pending();
        }
    }

    fn send_pending(&mut self) {
        if self.pending.is_empty() || self.broken {
            return;
        }
        let batch: Batch = Arc::new(std::mem::take(&mut self.pending));
        self.pending_bytes = 0;
        for tx in &self.feeds {
            if tx.send(batch.clone()).is_err() {
                // A pass ended early (read error): the result would be incomplete.
                self.stop();
                return;
            }
        }
    }

    /// Give up: the passes end at their next read and their results are discarded.
    pub fn stop(&mut self) {
        self.broken = true;
        self.abort.store(true, Ordering::Release);
        self.feeds.clear();
        self.pending.clear();
    }

    /// End of the upload: the passes' results if they saw exactly the file's `size` bytes.
    pub fn finish(mut self, size: u64) -> Option<Box<Analysed>> {
        if self.next != size {
            self.stop();
        }
        self.send_pending();
        let broken = self.broken;
        self.feeds.clear(); // end of stream for the passes
        let t = self.passes.take()?;
        let sha = t.sha.join();
        let rec = t.rec.join();
        let seal = t.seal.join();
        if broken {
            return None;
        }
        let sha = sha.ok()?.ok()?;
        let rec = rec.ok()?.ok()?;
        let (seal, payload) = seal.ok()?.ok()?;
        Some(Box::new(Analysed {
            sha256: crate::spool::hex_lower(&sha),
            passes: Some(Passes { rec, seal, payload }),
        }))
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        if self.passes.is_some() {
            self.stop();
            if let Some(t) = self.passes.take() {
                let _ = t.sha.join();
                let _ = t.rec.join();
                let _ = t.seal.join();
            }
        }
        RUNNING.fetch_sub(1, Ordering::AcqRel);
    }
}

fn spawn<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> io::Result<JoinHandle<T>> {
    std::thread::Builder::new().name(name.into()).spawn(f)
}

/// One pass's view of the upload: the prefix from the file, then the fed chunks.
struct Feed {
    prefix: io::Take<File>,
    rx: Receiver<Batch>,
    batch: Batch,
    next_in_batch: usize,
    cur: Bytes,
    abort: Arc<AtomicBool>,
}

impl Feed {
    fn aborted(&self) -> io::Result<()> {
        if self.abort.load(Ordering::Acquire) {
            Err(io::Error::other("analysis stopped"))
        } else {
            Ok(())
        }
    }
}

impl Read for Feed {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let avail = self.fill_buf()?;
        let n = avail.len().min(buf.len());
        buf[..n].copy_from_slice(&avail[..n]);
        self.consume(n);
        Ok(n)
    }
}

impl BufRead for Feed {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        self.aborted()?;
        if self.cur.is_empty() && self.prefix.limit() > 0 {
            // The bytes written before the analysis started: from the file.
            let mut v = vec![0u8; (self.prefix.limit() as usize).min(256 * 1024)];
            let n = self.prefix.read(&mut v)?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "upload shorter than its analysed prefix",
                ));
            }
            v.truncate(n);
            self.cur = Bytes::from(v);
        }
        while self.cur.is_empty() {
            if let Some(b) = self.batch.get(self.next_in_batch) {
                self.cur = b.clone();
                self.next_in_batch += 1;
                continue;
            }
            match self.rx.recv() {
                Ok(b) => {
                    self.batch = b;
                    self.next_in_batch = 0;
                }
                Err(_) => {
                    self.aborted()?;
                    return Ok(&[]);
                }
            }
        }
        Ok(&self.cur)
    }

    fn consume(&mut self, amt: usize) {
        bytes::Buf::advance(&mut self.cur, amt);
    }
}

/// How many analyses are running (tests check the budget is returned).
#[cfg(test)]
fn running() -> usize {
    RUNNING.load(Ordering::Acquire)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seal;
    use std::io::Write;
    use std::sync::Mutex;

    /// Tests share the process-wide [`MAX_LIVE`] budget: run them one at a time.
    static SERIAL: Mutex<()> = Mutex::new(());
    const KEY: &str = "1234567890ABCDEF1234567890ABCDEF";

    fn key() -> SealKey {
        SealKey::from_hex(KEY).unwrap()
    }

    /// A sealed LB order of `n` payments, large enough for many chunks.
    fn sealed_order(n: usize) -> Vec<u8> {
        let mut raw = Vec::new();
        let sender = b"0009912346";
        raw.extend_from_slice(b"11");
        raw.extend_from_slice(sender);
        raw.extend_from_slice(
            b"261129LEVERANTORSBETALNINGARGENAST             SEK                  \r\n",
        );
        let mut total = 0u64;
        for i in 0..n {
            let amount = 100 + (i as u64 * 7919) % 50000;
            total += amount;
            raw.extend_from_slice(
                format!(
                    "140001234566{:<25}{amount:012}GENAST     {:<20}\r\n",
                    format!("REF{i}"),
                    format!("VERIF {i}")
                )
                .as_bytes(),
            );
        }
        raw.extend_from_slice(format!("290009912346{n:08}{total:012}{:48}\r\n", "").as_bytes());
        let mut out = Vec::new();
        seal::seal_stream(&key(), "261129", &raw[..], &mut out).unwrap();
        out
    }

    /// Write `data` as an upload would (first `prefix` bytes before the analysis starts,
    /// then `chunk`-sized writes, each fed after it is written) and finish.
    fn upload(data: &[u8], chunk: usize, prefix: usize) -> (Option<Box<Analysed>>, Passes, String) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("up");
        let mut f = File::create(&path).unwrap();
        f.write_all(&data[..prefix]).unwrap();
        let mut live = Live::start(&path, prefix as u64, &[key()]).unwrap();
        let mut off = prefix;
        for c in data[prefix..].chunks(chunk) {
            f.write_all(c).unwrap();
            live.feed(off as u64, &Bytes::copy_from_slice(c));
            off += c.len();
        }
        let got = live.finish(data.len() as u64);
        let back = super::super::ingest::read_passes(&path, &[key()]).unwrap();
        let sha = crate::spool::sha256_file(&path).unwrap();
        (got, back, sha)
    }

    fn same(a: &Passes, b: &Passes) {
        assert_eq!(a.payload, b.payload);
        assert_eq!(a.rec.kind, b.rec.kind);
        assert_eq!(a.rec.sealed, b.rec.sealed);
        assert_eq!(a.rec.records, b.rec.records);
        assert_eq!(a.rec.routing, b.rec.routing);
        assert_eq!(
            format!("{:?}", a.rec.problems),
            format!("{:?}", b.rec.problems)
        );
        assert_eq!(format!("{:?}", a.seal), format!("{:?}", b.seal));
    }

    #[test]
    fn live_passes_equal_a_read_back() {
        let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
        let data = sealed_order(5000);
        for (chunk, prefix) in [(32 * 1024, 0), (1000, 0), (7, 13), (65536, 100_000)] {
            let (got, back, sha) = upload(&data, chunk, prefix);
            let got = got.expect("in-order upload analysed live");
            assert_eq!(got.sha256, sha);
            same(got.passes.as_ref().unwrap(), &back);
            assert!(matches!(
                got.passes.as_ref().unwrap().seal,
                Some((seal::SealVerdict::Valid { .. }, _))
            ));
        }
        assert_eq!(running(), 0);
    }

    /// A refused file gets the same words whichever way it was read: an over-long TK99 line
    /// is split into pieces where the reads end, and a CRLF split between pieces must not
    /// change the length the refusal quotes.
    #[test]
    fn an_over_long_seal_line_is_reported_the_same_live_and_read_back() {
        let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
        let mut data = sealed_order(50);
        let last = data[..data.len() - 2]
            .iter()
            .rposition(|&b| b == b'\n')
            .unwrap()
            + 1;
        data.truncate(last);
        data.extend_from_slice(b"99");
        data.extend(std::iter::repeat_n(b'7', 4998));
        data.extend_from_slice(b"\r\n");
        for chunk in [1, 2, 3, 4095, 4097, 65536] {
            let (got, back, _) = upload(&data, chunk, 0);
            let got = got.expect("analysed live");
            same(got.passes.as_ref().unwrap(), &back);
            let shown = format!("{:?}", back.seal);
            assert!(shown.contains("5000"), "{shown}");
        }
    }

    #[test]
    fn tampered_upload_is_seen_as_tampered() {
        let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
        let mut data = sealed_order(3000);
        let at = data.len() / 2;
        data[at] = if data[at] == b'1' { b'2' } else { b'1' };
        let (got, back, _) = upload(&data, 4096, 0);
        let got = got.unwrap();
        same(got.passes.as_ref().unwrap(), &back);
        assert!(matches!(
            got.passes.as_ref().unwrap().seal,
            Some((seal::SealVerdict::Invalid(_), _))
        ));
    }

    #[test]
    fn out_of_order_or_short_uploads_fall_back_to_reading_back() {
        let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
        let data = sealed_order(2000);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("up");
        std::fs::write(&path, &data).unwrap();
        // A rewrite of an earlier region.
        let mut live = Live::start(&path, 0, &[key()]).unwrap();
        live.feed(0, &Bytes::copy_from_slice(&data[..1000]));
        live.feed(500, &Bytes::copy_from_slice(&data[500..]));
        assert!(live.finish(data.len() as u64).is_none());
        // Fed bytes end before the file does.
        let mut live = Live::start(&path, 0, &[key()]).unwrap();
        live.feed(0, &Bytes::copy_from_slice(&data[..1000]));
        assert!(live.finish(data.len() as u64).is_none());
        // Dropped without finishing (session ended): threads end, budget returned.
        let mut live = Live::start(&path, 0, &[key()]).unwrap();
        live.feed(0, &Bytes::copy_from_slice(&data[..1000]));
        drop(live);
        assert_eq!(running(), 0);
    }

    #[test]
    fn the_number_of_live_analyses_is_bounded() {
        let _g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("up");
        std::fs::write(&path, b"").unwrap();
        let mut held = Vec::new();
        for _ in 0..MAX_LIVE {
            held.push(Live::start(&path, 0, &[key()]).unwrap());
        }
        assert!(Live::start(&path, 0, &[key()]).is_none());
        drop(held);
        assert!(Live::start(&path, 0, &[key()]).is_some());
    }
}
