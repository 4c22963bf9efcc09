//! Runs the `switchyard` binary as a user does, and copies the repository's
//! layout (config, sample controllers) into a temporary folder for it to
//! run in.

#![allow(dead_code, reason = "each test file uses part of this module")]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// Builds can take a while on a cold machine.
pub const BUILD_WAIT: Duration = Duration::from_secs(300);

/// The repository root.
pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap()
}

/// A running `switchyard` process whose stdout and stderr lines can be
/// waited for. Killed when dropped.
pub struct Process {
    pub child: Child,
    lines: mpsc::Receiver<String>,
    /// Every line received so far, for [`Process::seen`].
    history: std::sync::Mutex<Vec<String>>,
}

impl Process {
    /// Starts `switchyard ARGS` in `cwd`, logging at `info`.
    pub fn start(cwd: &Path, args: &[&str]) -> Process {
        let mut child = Command::new(env!("CARGO_BIN_EXE_switchyard"))
            .args(args)
            .current_dir(cwd)
            .env("SWITCHYARD_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, lines) = mpsc::channel();
        for stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        Process {
            child,
            lines,
            history: std::sync::Mutex::default(),
        }
    }

    /// Waits for a line containing every one of `needles`, and returns it.
    pub fn wait_for_all(&self, needles: &[&str]) -> String {
        let deadline = std::time::Instant::now() + BUILD_WAIT;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.history.lock().unwrap().push(line.clone());
                    if needles.iter().all(|n| line.contains(n)) {
                        return line;
                    }
                }
                Err(_) => panic!("no line containing {needles:?}"),
            }
        }
    }

    /// The first line, seen already or still to come, containing every one
    /// of `needles` (stdout and stderr are read apart, so lines of the two
    /// may arrive in either order).
    pub fn seen(&self, needles: &[&str]) -> String {
        let found = self
            .history
            .lock()
            .unwrap()
            .iter()
            .find(|line| needles.iter().all(|n| line.contains(n)))
            .cloned();
        found.unwrap_or_else(|| self.wait_for_all(needles))
    }

    /// Waits for a line containing `needle`, and returns it.
    pub fn wait_for(&self, needle: &str) -> String {
        self.wait_for_all(&[needle])
    }

    /// Waits for `listening on ws://ADDR` and returns `ADDR`.
    pub fn listening(&self) -> String {
        let ready = self.wait_for("listening on ws://");
        ready
            .trim()
            .trim_start_matches("listening on ws://")
            .to_owned()
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `switchyard ARGS` in `cwd` to its end.
pub fn run(cwd: &Path, args: &[&str]) -> ExitStatus {
    Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(args)
        .current_dir(cwd)
        .status()
        .unwrap()
}

/// Runs `switchyard ARGS` in `cwd` to its end; returns whether it
/// succeeded, its stdout and its stderr.
pub fn output(cwd: &Path, args: &[&str]) -> (bool, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(args)
        .current_dir(cwd)
        .output()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn copy_tree(from: &Path, to: &Path, skip: &dyn Fn(&Path) -> bool) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        if skip(&path) {
            continue;
        }
        let dest = to.join(path.file_name().unwrap());
        if path.is_dir() {
            copy_tree(&path, &dest, skip);
        } else {
            std::fs::copy(&path, &dest).unwrap();
        }
    }
}

/// A copy of the repository's layout as a user has it after cloning: the
/// shipped `switchyard.toml`, the sample controllers' sources under
/// `controllers/` (Rust and Python; no built modules) and the demo page in
/// `public/`. Two things differ, neither about
/// paths Switchyard reads: the samples depend on the repository's SDK by an
/// absolute path, and build into `target/user-path/{name}` of the
/// repository, so that a second run compiles no dependency again. Each
/// test has a target folder of its own: cargo copies each build's `.wasm`
/// to one place per folder, so two copies of a crate built there (or the
/// repository's own samples) would overwrite each other's modules.
pub fn repository_copy(name: &str) -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    std::fs::copy(
        repo().join("switchyard.toml"),
        root.path().join("switchyard.toml"),
    )
    .unwrap();
    let controllers = root.path().join("controllers");
    copy_tree(&repo().join("controllers"), &controllers, &|path| {
        path.file_name().is_some_and(|n| n == "target")
            || path.extension().is_some_and(|ext| ext == "wasm")
    });
    copy_tree(&repo().join("public"), &root.path().join("public"), &|_| {
        false
    });
    let manifest = controllers.join("Cargo.toml");
    let text = std::fs::read_to_string(&manifest).unwrap();
    let sdk = format!(
        "path = {:?}",
        repo().join("guest-sdk").display().to_string()
    );
    assert!(text.contains("path = \"../guest-sdk\""), "{text}");
    std::fs::write(&manifest, text.replace("path = \"../guest-sdk\"", &sdk)).unwrap();
    std::fs::create_dir_all(root.path().join(".cargo")).unwrap();
    std::fs::write(
        root.path().join(".cargo/config.toml"),
        format!(
            "[build]\ntarget-dir = {:?}\n",
            repo()
                .join("target/user-path")
                .join(name)
                .display()
                .to_string()
        ),
    )
    .unwrap();
    root
}

/// Replaces `text` with `with` in the file at `path` (which must hold it).
pub fn edit(path: &PathBuf, text: &str, with: &str) {
    let source = std::fs::read_to_string(path).unwrap();
    assert!(
        source.contains(text),
        "{} does not hold {text:?}",
        path.display()
    );
    std::fs::write(path, source.replace(text, with)).unwrap();
}

/// The answer to `GET path` from `addr` (`host:port`), head and body.
pub fn http_get(addr: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(BUILD_WAIT)).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    answer
}
