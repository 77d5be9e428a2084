//! Harness for the network tests (`tests/swarm_*.rs`): model folders with an independently
//! built torrent and manifest, `swarmlm seed`/`fetch` processes with hard timeouts, and the
//! real third-party peers (opentracker, aria2c) on 127.0.0.1.
//!
//! The torrent writer here is deliberately separate from the one swarmlm ships: a fetch that
//! accepts these torrents agrees with a second encoder, not just with itself.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use sha1::Sha1;
use sha2::{Digest, Sha256};

pub use swarmlm_e2e::swarmlm;

/// Deterministic bytes (xorshift) so failures reproduce.
pub fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// A model folder ready to seed: files, `.swarmlm/manifest.toml`, `.swarmlm/model.torrent`;
/// copies of the manifest and torrent outside the folder for fetch by manifest / .torrent.
pub struct Model {
    pub name: String,
    pub dir: PathBuf,
    pub files: Vec<(String, Vec<u8>)>,
    pub torrent: Vec<u8>,
    pub torrent_path: PathBuf,
    pub manifest_path: PathBuf,
    pub info_hash: String,
    pub magnet: String,
    pub piece_length: u64,
}

impl Model {
    pub fn total_len(&self) -> u64 {
        self.files.iter().map(|(_, d)| d.len() as u64).sum()
    }

    /// The manifest copy outside the folder, as a `fetch` source argument.
    pub fn manifest_arg(&self) -> String {
        self.manifest_path.display().to_string()
    }

    /// The .torrent copy outside the folder, as a `fetch` source argument.
    pub fn torrent_arg(&self) -> String {
        self.torrent_path.display().to_string()
    }
}

/// Bencoding for the few value kinds a torrent needs.
pub enum B {
    Int(i64),
    Bytes(Vec<u8>),
    List(Vec<B>),
    Dict(BTreeMap<Vec<u8>, B>),
}

impl B {
    pub fn str(s: &str) -> B {
        B::Bytes(s.as_bytes().to_vec())
    }
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            B::Int(i) => out.extend_from_slice(format!("i{i}e").as_bytes()),
            B::Bytes(b) => {
                out.extend_from_slice(format!("{}:", b.len()).as_bytes());
                out.extend_from_slice(b);
            }
            B::List(l) => {
                out.push(b'l');
                for v in l {
                    v.encode(out);
                }
                out.push(b'e');
            }
            B::Dict(d) => {
                out.push(b'd');
                for (k, v) in d {
                    B::Bytes(k.clone()).encode(out);
                    v.encode(out);
                }
                out.push(b'e');
            }
        }
    }
}

fn dict(items: Vec<(&str, B)>) -> B {
    B::Dict(
        items
            .into_iter()
            .map(|(k, v)| (k.as_bytes().to_vec(), v))
            .collect(),
    )
}

/// Builds a v1 multi-file torrent: returns (torrent bytes, info hash hex).
pub fn build_torrent(
    name: &str,
    files: &[(String, Vec<u8>)],
    piece_length: u64,
    announce: Option<&str>,
) -> (Vec<u8>, String) {
    let mut payload = Vec::new();
    for (_, d) in files {
        payload.extend_from_slice(d);
    }
    let mut pieces = Vec::new();
    for chunk in payload.chunks(piece_length as usize) {
        pieces.extend_from_slice(&Sha1::digest(chunk));
    }
    let file_list = files
        .iter()
        .map(|(p, d)| {
            dict(vec![
                ("length", B::Int(d.len() as i64)),
                ("path", B::List(p.split('/').map(B::str).collect())),
            ])
        })
        .collect();
    let info = dict(vec![
        ("files", B::List(file_list)),
        ("name", B::str(name)),
        ("piece length", B::Int(piece_length as i64)),
        ("pieces", B::Bytes(pieces)),
    ]);
    let mut info_bytes = Vec::new();
    info.encode(&mut info_bytes);
    let info_hash = hex::encode(Sha1::digest(&info_bytes));
    let mut top = vec![("info", info)];
    if let Some(a) = announce {
        top.push(("announce", B::str(a)));
    }
    let mut torrent = Vec::new();
    dict(top).encode(&mut torrent);
    (torrent, info_hash)
}

/// The manifest text for these files (format: `magnets/README.md`).
pub fn manifest_text(
    name: &str,
    magnet: &str,
    piece_length: u64,
    files: &[(String, Vec<u8>)],
    sha_override: Option<(&str, [u8; 32])>,
) -> String {
    let total: usize = files.iter().map(|(_, d)| d.len()).sum();
    let mut s = format!(
        "name = \"{name}\"\ndescription = \"test model\"\nlicense = \"MIT\"\nsource = \"swarm tests\"\n\
         format = \"hf-safetensors\"\nmagnet = \"{magnet}\"\npiece_length = {piece_length}\ntotal_size = {total}\n"
    );
    for (p, d) in files {
        let mut sha: [u8; 32] = Sha256::digest(d).into();
        if let Some((op, os)) = sha_override {
            if op == p {
                sha = os;
            }
        }
        s.push_str(&format!(
            "\n[[files]]\npath = \"{p}\"\nsize = {}\nsha256 = \"{}\"\n",
            d.len(),
            hex::encode(sha)
        ));
    }
    s
}

/// Writes a model of the given files under `root/<name>/`, its torrent (optionally announcing
/// to `announce`) and manifest, and copies of both as `root/<name>.torrent` / `.toml`.
pub fn make_model(
    root: &Path,
    name: &str,
    files: Vec<(String, Vec<u8>)>,
    piece_length: u64,
    announce: Option<&str>,
) -> Model {
    let dir = root.join(name);
    for (p, d) in &files {
        let full = dir.join(p);
        std::fs::create_dir_all(full.parent().unwrap()).unwrap();
        std::fs::write(&full, d).unwrap();
    }
    let (torrent, info_hash) = build_torrent(name, &files, piece_length, announce);
    let mut magnet = format!("magnet:?xt=urn:btih:{info_hash}&dn={name}");
    if let Some(a) = announce {
        magnet.push_str(&format!("&tr={}", percent_encode(a)));
    }
    let manifest = manifest_text(name, &magnet, piece_length, &files, None);
    let state = dir.join(".swarmlm");
    std::fs::create_dir_all(&state).unwrap();
    std::fs::write(state.join("manifest.toml"), &manifest).unwrap();
    std::fs::write(state.join("model.torrent"), &torrent).unwrap();
    let torrent_path = root.join(format!("{name}.torrent"));
    let manifest_path = root.join(format!("{name}.toml"));
    std::fs::write(&torrent_path, &torrent).unwrap();
    std::fs::write(&manifest_path, &manifest).unwrap();
    Model {
        name: name.to_string(),
        dir,
        files,
        torrent,
        torrent_path,
        manifest_path,
        info_hash,
        magnet,
        piece_length,
    }
}

/// A small model: two weight shards, a config, one file in a subfolder.
pub fn small_files(scale: usize, seed: u64) -> Vec<(String, Vec<u8>)> {
    vec![
        ("config.json".into(), pseudo_random(1_234, seed)),
        (
            "model-00001-of-00002.safetensors".into(),
            pseudo_random(700 * scale + 17, seed + 1),
        ),
        (
            "model-00002-of-00002.safetensors".into(),
            pseudo_random(500 * scale + 3, seed + 2),
        ),
        (
            "tokenizer/tokenizer.json".into(),
            pseudo_random(40_000, seed + 3),
        ),
    ]
}

fn percent_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Asserts `out` holds exactly the model's files with identical bytes.
pub fn assert_identical(model: &Model, out: &Path) {
    for (p, d) in &model.files {
        let got =
            std::fs::read(out.join(p)).unwrap_or_else(|e| panic!("{}: {e}", out.join(p).display()));
        assert_eq!(got.len(), d.len(), "{p}: size");
        assert!(got == *d, "{p}: bytes differ");
    }
}

/// Asserts the verification record lists every file with its true SHA-256.
pub fn assert_recorded(model: &Model, out: &Path) {
    let text = std::fs::read_to_string(out.join(".swarmlm/verified.json"))
        .expect("verification record written");
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    for (p, d) in &model.files {
        let want = hex::encode(Sha256::digest(d));
        assert_eq!(
            v["files"][p]["sha256"].as_str(),
            Some(want.as_str()),
            "record entry for {p}"
        );
    }
}

/// Runs a command to completion, killing it after `timeout` (then the test fails).
pub fn run_with_timeout(mut cmd: Command, timeout: Duration) -> Output {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(timeout) {
        Ok(out) => out.expect("wait"),
        Err(_) => {
            // The child handle moved into the waiting thread; kill it by its pid.
            let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
            panic!("process {pid} did not finish within {timeout:?}: {cmd:?}");
        }
    }
}

pub fn text(out: &Output) -> String {
    format!(
        "status: {}\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// JSON lines of a `--json` run's stdout.
pub fn json_events(out: &Output) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// The `swarmlm fetch` command for loopback tests.
pub fn fetch_cmd(home: &Path, source: &str, out: &Path, peers: &[SocketAddr]) -> Command {
    let mut cmd = swarmlm(home);
    cmd.arg("fetch")
        .arg(source)
        .arg("--out")
        .arg(out)
        .args(["--no-dht", "--listen", "127.0.0.1:0", "--json"])
        .args(["--stall-timeout", "20s"]);
    for p in peers {
        cmd.arg("--peer").arg(p.to_string());
    }
    cmd
}

/// The watchdog on one `swarmlm` run in these tests: far above what a loopback transfer of a
/// few MB takes, so only a hang reaches it.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(90);

/// Runs `swarmlm fetch` (see [`fetch_cmd`]) to completion, killed after [`FETCH_TIMEOUT`].
pub fn run_fetch(home: &Path, source: &str, out: &Path, peers: &[SocketAddr]) -> Output {
    run_with_timeout(fetch_cmd(home, source, out, peers), FETCH_TIMEOUT)
}

/// A running `swarmlm seed` (or `fetch --seed`) process; killed on drop.
pub struct Seeder {
    pub child: Child,
    pub listen: SocketAddr,
    pub magnet: String,
    pub events: mpsc::Receiver<serde_json::Value>,
}

impl Seeder {
    /// Sends SIGTERM and waits for a clean exit; returns whether the exit status was 0.
    pub fn stop(mut self) -> bool {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(st)) = self.child.try_wait() {
                return st.success();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }
}

impl Drop for Seeder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts a process that prints `{"event":"seeding",...}` on stdout and waits for that line.
pub fn spawn_seeding(mut cmd: Command) -> Seeder {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn seeder");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                if tx.send(v).is_err() {
                    break;
                }
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(v) if v["event"] == "seeding" => {
                let listen: SocketAddr = v["listen"].as_str().unwrap().parse().unwrap();
                assert!(listen.ip().is_loopback(), "seeder listens on {listen}");
                return Seeder {
                    child,
                    listen,
                    magnet: v["magnet"].as_str().unwrap().to_string(),
                    events: rx,
                };
            }
            Ok(_) => continue,
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "seeder did not report seeding within 90s (exit: {:?})",
                    child.try_wait()
                );
            }
        }
    }
}

/// `swarmlm seed <dir>` on loopback.
pub fn start_seeder(home: &Path, target: &Path, extra: &[&str]) -> Seeder {
    let mut cmd = swarmlm(home);
    cmd.arg("seed")
        .arg(target)
        .args(["--listen", "127.0.0.1:0", "--no-dht", "--json"])
        .args(extra);
    spawn_seeding(cmd)
}

/// A free TCP port on 127.0.0.1 (bound then released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Fails with the CI install line when a third-party tool is missing.
pub fn require_tool(bin: &str) -> PathBuf {
    for dir in ["/usr/bin", "/usr/local/bin", "/usr/sbin"] {
        let p = Path::new(dir).join(bin);
        if p.is_file() {
            return p;
        }
    }
    panic!(
        "{bin} is not installed; this test needs it. Install it as .ci/run does: \
         `apt-get install -y aria2 opentracker`"
    );
}

/// Debian's opentracker on 127.0.0.1 in closed mode with a whitelist of info hashes.
pub struct Tracker {
    child: Child,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl Tracker {
    pub fn announce_url(&self) -> String {
        format!("http://127.0.0.1:{}/announce", self.port)
    }

    /// Peers the tracker counts for an info hash (from its scrape page).
    pub fn seeders_and_leechers(&self, info_hash_hex: &str) -> Option<(u64, u64)> {
        let raw = hex::decode(info_hash_hex).ok()?;
        let mut q = String::new();
        for b in raw {
            q.push_str(&format!("%{b:02X}"));
        }
        let body = http_get(self.port, &format!("/scrape?info_hash={q}"))?;
        let find = |key: &[u8]| -> Option<u64> {
            let pos = body.windows(key.len()).position(|w| w == key)? + key.len();
            let rest = &body[pos..];
            let end = rest.iter().position(|&c| c == b'e')?;
            std::str::from_utf8(&rest[1..end]).ok()?.parse().ok()
        };
        Some((find(b"8:complete")?, find(b"10:incomplete")?))
    }
}

impl Drop for Tracker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn http_get(port: u16, path: &str) -> Option<Vec<u8>> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).ok()?;
    let start = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    Some(buf[start..].to_vec())
}

/// The whitelist's file name inside the tracker's folder.
const WHITELIST: &str = "whitelist";

/// Starts opentracker on 127.0.0.1:`port` (TCP and UDP), whitelisting `info_hashes`.
pub fn start_tracker_on(port: u16, info_hashes: &[&str]) -> Tracker {
    use std::os::unix::fs::PermissionsExt;
    let bin = require_tool("opentracker");
    let dir = tempfile::Builder::new()
        .prefix("swarmlm-tracker")
        .tempdir()
        .unwrap();
    // As root it chroots into the folder and drops to nobody, who must be able to read both.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let list = dir.path().join(WHITELIST);
    std::fs::write(&list, info_hashes.join("\n") + "\n").unwrap();
    std::fs::set_permissions(&list, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut cmd = Command::new(&bin);
    cmd.args([
        "-i",
        "127.0.0.1",
        "-p",
        &port.to_string(),
        "-P",
        &port.to_string(),
    ])
    .arg("-d")
    .arg(dir.path())
    // Relative to -d: as root opentracker chroots into that folder before it opens the list
    // (an absolute path outside it is then silently not found, every hash is refused and no
    // announce is counted); as another user it only chdirs there. A relative name works in both.
    .args(["-w", WHITELIST])
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    let is_root = std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false);
    if is_root {
        cmd.args(["-u", "nobody"]);
    }
    let mut child = cmd.spawn().expect("spawn opentracker");
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(st)) = child.try_wait() {
            panic!("opentracker exited at start: {st}");
        }
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Tracker {
                child,
                port,
                _dir: dir,
            };
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("opentracker did not listen on 127.0.0.1:{port}");
}

/// aria2c seeding `torrent` from `dir` on `port`; `unverified` serves whatever is on disk.
pub fn start_aria2_seeder(torrent: &Path, dir: &Path, port: u16, unverified: bool) -> Child {
    let bin = require_tool("aria2c");
    let mut cmd = Command::new(bin);
    cmd.arg(torrent)
        .arg(format!("--dir={}", dir.display()))
        .args([
            "--seed-ratio=0.0",
            "--enable-dht=false",
            "--enable-dht6=false",
            "--bt-enable-lpd=false",
            "--enable-peer-exchange=false",
            "--interface=127.0.0.1",
            "--bt-external-ip=127.0.0.1",
            "--disable-ipv6=true",
            "--file-allocation=none",
            "--console-log-level=warn",
            "--summary-interval=0",
        ])
        .arg(format!("--listen-port={port}"))
        .arg(if unverified {
            "--bt-seed-unverified=true"
        } else {
            "--bt-seed-unverified=false"
        })
        .arg(if unverified {
            "--check-integrity=false"
        } else {
            "--check-integrity=true"
        })
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    cmd.spawn().expect("spawn aria2c")
}

/// Waits until something accepts TCP on 127.0.0.1:port.
pub fn wait_listening(port: u16, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("nothing listening on 127.0.0.1:{port} after {timeout:?}");
}

/// A fresh home for one test: `SWARMLM_HOME` plus a scratch folder.
pub fn scratch() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("swarmlm-e2e")
        .tempdir()
        .unwrap()
}

/// A minimal BitTorrent peer that has every piece, unchokes at once and answers every request
/// with the right length of flipped bytes: an adversary that is fast and eager, so a leecher
/// that also knows an honest seeder is sure to take pieces from it. (aria2c told to serve
/// unverified data is the real-client adversary, but it does not unchoke a new peer at once,
/// so next to an honest seeder it was often never asked for a piece.) No extensions: it does
/// not answer BEP 9 metadata requests.
pub struct CorruptPeer {
    pub addr: SocketAddr,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Request messages answered with bad data, over all connections.
    pub served: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl CorruptPeer {
    pub fn start(model: &Model) -> CorruptPeer {
        use std::sync::atomic::{AtomicBool, AtomicUsize};
        use std::sync::Arc;
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let mut payload = Vec::new();
        for (_, d) in &model.files {
            payload.extend(d.iter().map(|b| !b));
        }
        let payload = Arc::new(payload);
        let info_hash: [u8; 20] = hex::decode(&model.info_hash).unwrap().try_into().unwrap();
        let pieces = model.total_len().div_ceil(model.piece_length) as usize;
        let piece_length = model.piece_length as usize;
        let stop = Arc::new(AtomicBool::new(false));
        let served = Arc::new(AtomicUsize::new(0));
        let (stop2, served2) = (stop.clone(), served.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stop2.load(std::sync::atomic::Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let (payload, served) = (payload.clone(), served2.clone());
                std::thread::spawn(move || {
                    let _ = serve_corrupt(conn, info_hash, pieces, piece_length, &payload, &served);
                });
            }
        });
        CorruptPeer { addr, stop, served }
    }
}

impl Drop for CorruptPeer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = std::net::TcpStream::connect(self.addr);
    }
}

fn serve_corrupt(
    mut conn: std::net::TcpStream,
    info_hash: [u8; 20],
    pieces: usize,
    piece_length: usize,
    payload: &[u8],
    served: &std::sync::atomic::AtomicUsize,
) -> std::io::Result<()> {
    use std::io::{Read, Write};
    conn.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut hs = [0u8; 68];
    conn.read_exact(&mut hs)?;
    if hs[0] != 19 || &hs[1..20] != b"BitTorrent protocol" || hs[28..48] != info_hash {
        return Ok(());
    }
    let mut reply = Vec::with_capacity(68);
    reply.push(19);
    reply.extend_from_slice(b"BitTorrent protocol");
    reply.extend_from_slice(&[0u8; 8]);
    reply.extend_from_slice(&info_hash);
    reply.extend_from_slice(b"-XX0001-corruptpeer!");
    conn.write_all(&reply)?;
    let mut bitfield = vec![0u8; pieces.div_ceil(8)];
    for i in 0..pieces {
        bitfield[i / 8] |= 0x80 >> (i % 8);
    }
    let mut msg = Vec::new();
    msg.extend_from_slice(&(1 + bitfield.len() as u32).to_be_bytes());
    msg.push(5);
    msg.extend_from_slice(&bitfield);
    msg.extend_from_slice(&1u32.to_be_bytes());
    msg.push(1); // unchoke
    conn.write_all(&msg)?;
    loop {
        let mut len = [0u8; 4];
        conn.read_exact(&mut len)?;
        let len = u32::from_be_bytes(len) as usize;
        if len == 0 {
            continue; // keep-alive
        }
        if len > 1 << 20 {
            return Ok(());
        }
        let mut body = vec![0u8; len];
        conn.read_exact(&mut body)?;
        if body[0] != 6 || len != 13 {
            continue; // only requests get an answer
        }
        let word = |i: usize| u32::from_be_bytes(body[i..i + 4].try_into().unwrap()) as usize;
        let (index, begin, length) = (word(1), word(5), word(9));
        let start = index * piece_length + begin;
        let Some(block) = payload.get(start..start + length) else {
            return Ok(());
        };
        let mut piece = Vec::with_capacity(13 + length);
        piece.extend_from_slice(&(9 + length as u32).to_be_bytes());
        piece.push(7);
        piece.extend_from_slice(&(index as u32).to_be_bytes());
        piece.extend_from_slice(&(begin as u32).to_be_bytes());
        piece.extend_from_slice(block);
        conn.write_all(&piece)?;
        served.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}
