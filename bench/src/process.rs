//! Servers under test run as child processes of the bench.
//!
//! [`ServerProcess::start`] re-executes the bench binary with a hidden
//! `serve-native` or `serve-switchyard` subcommand; the child binds
//! `127.0.0.1:0`, prints `listening on ADDR` on stdout and serves until its
//! stdin closes (so a crashed parent leaves no server behind). Keeping the
//! server in its own process gives it its own allocator and lets the parent
//! read its resident memory and CPU time from `/proc/<pid>`.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, bail};

/// Which server a child process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerKind {
    /// The hand-written tokio-tungstenite baseline ([`crate::native`]).
    Native,
    /// Switchyard serving the sample controllers.
    Switchyard,
    /// The native baseline answering `/echo` through the echo controller
    /// ([`crate::native`] with a probe): what the WebAssembly layer alone
    /// adds to it.
    NativeWasm,
    /// Node's `ws` (`bench/node/server.mjs`), run with the system's `node`.
    NodeWs,
}

impl ServerKind {
    /// The name used in reports.
    pub fn name(self) -> &'static str {
        match self {
            ServerKind::Native => "native",
            ServerKind::Switchyard => "switchyard",
            ServerKind::NativeWasm => "native+wasm",
            ServerKind::NodeWs => "node-ws",
        }
    }
}

/// A running server child; killed when dropped.
pub struct ServerProcess {
    child: Child,
    /// Kept open so that a late line from the child does not hit a closed pipe.
    _stdout: BufReader<ChildStdout>,
    /// Where the server listens.
    pub addr: SocketAddr,
}

impl ServerProcess {
    /// Starts a server of `kind` and waits until it listens. Switchyard
    /// serves the modules in `controllers`, with the settings of the config
    /// file `config` when one is given (defaults otherwise).
    pub fn start(
        kind: ServerKind,
        controllers: &Path,
        config: Option<&Path>,
    ) -> anyhow::Result<ServerProcess> {
        let mut command = match kind {
            ServerKind::NodeWs => Command::new("node"),
            _ => Command::new(std::env::current_exe().context("cannot find the bench executable")?),
        };
        match kind {
            ServerKind::NodeWs => command.arg(node_dir().join("server.mjs")),
            ServerKind::Native => command.arg("serve-native"),
            ServerKind::NativeWasm => command
                .arg("serve-native")
                .arg("--wasm")
                .arg(controllers.join("echo.wasm")),
            ServerKind::Switchyard => command
                .arg("serve-switchyard")
                .arg("--controllers")
                .arg(controllers),
        };
        if matches!(kind, ServerKind::Switchyard | ServerKind::NativeWasm)
            && let Some(file) = config
        {
            command.arg("--config").arg(file);
        }
        command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = command
            .spawn()
            .with_context(|| format!("cannot start the {} server", kind.name()))?;
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout is piped"));
        let mut line = String::new();
        stdout.read_line(&mut line)?;
        let Some(addr) = line.trim().strip_prefix("listening on ") else {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "the {} server did not start (it printed {line:?}); see its errors above",
                kind.name()
            );
        };
        let addr = addr
            .parse()
            .with_context(|| format!("bad address {addr:?}"))?;
        Ok(ServerProcess {
            child,
            _stdout: stdout,
            addr,
        })
    }

    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The child's resident memory (`VmRSS`), in bytes.
    pub fn resident_bytes(&self) -> anyhow::Result<u64> {
        let path = format!("/proc/{}/status", self.pid());
        let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
        let kib = status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|rest| {
                rest.trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
            .with_context(|| format!("no VmRSS in {path}"))?;
        Ok(kib * 1024)
    }

    /// CPU time (user + system) the child has used so far.
    pub fn cpu_time(&self) -> anyhow::Result<Duration> {
        cpu_time(&self.pid().to_string())
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The folder of the Node's `ws` server (`bench/node`).
fn node_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("node")
}

/// Makes Node's `ws` server runnable: checks for `node` and installs `ws`
/// into `bench/node/node_modules` with npm when it is not there yet. The
/// error says what is missing.
pub fn prepare_node_ws() -> anyhow::Result<()> {
    let dir = node_dir();
    let version = Command::new("node").arg("--version").output();
    match version {
        Ok(out) if out.status.success() => {}
        _ => bail!("`node` is not installed (Debian: apt-get install nodejs npm)"),
    }
    if dir.join("node_modules/ws/package.json").is_file() {
        return Ok(());
    }
    let status = Command::new("npm")
        .args(["install", "--no-audit", "--no-fund", "--silent"])
        .current_dir(&dir)
        .status()
        .context("`npm` is not installed (Debian: apt-get install npm)")?;
    if !status.success() {
        bail!("`npm install` in {} failed", dir.display());
    }
    Ok(())
}

/// CPU time (user + system, all threads) of process `pid` (`"self"` for
/// this one), from `/proc/<pid>/stat`.
pub fn cpu_time(pid: &str) -> anyhow::Result<Duration> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')').context("malformed stat")? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 here.
    let ticks: u64 = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Ok(Duration::from_nanos(ticks * 1_000_000_000 / per_second))
}

/// CPU time all processes of the machine have used so far (every field of
/// `/proc/stat`'s `cpu` line but idle and iowait).
pub fn machine_busy() -> anyhow::Result<Duration> {
    let stat = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    let line = stat.lines().next().context("empty /proc/stat")?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(str::parse)
        .collect::<Result<_, _>>()
        .context("malformed /proc/stat")?;
    // user nice system idle iowait irq softirq steal (guest time is in user).
    let busy: u64 = fields.iter().take(8).sum::<u64>() - fields[3] - fields[4];
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Ok(Duration::from_nanos(busy * 1_000_000_000 / per_second))
}

/// Waits until the machine is quiet (under 0.2 cores busy over half a
/// second), for at most `patience`; returns the cores last seen busy. The
/// bench shares its cores with whatever else runs, such as a build.
pub fn wait_for_quiet(patience: Duration) -> anyhow::Result<f64> {
    let start = std::time::Instant::now();
    loop {
        let before = machine_busy()?;
        std::thread::sleep(Duration::from_millis(500));
        let busy = (machine_busy()? - before).as_secs_f64() / 0.5;
        if busy < 0.2 || start.elapsed() >= patience {
            return Ok(busy);
        }
    }
}

/// Raises this process's soft open-file limit to its hard limit and returns
/// the new limit. Every bench process (parent and servers) calls this; the
/// hard limit itself cannot be raised without privileges it may not have.
pub fn raise_open_file_limit() -> anyhow::Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid, writable rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        bail!("getrlimit: {}", std::io::Error::last_os_error());
    }
    limit.rlim_cur = limit.rlim_max;
    // SAFETY: `limit` is a valid rlimit.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
        bail!("setrlimit: {}", std::io::Error::last_os_error());
    }
    Ok(limit.rlim_cur)
}

/// The arguments of the hidden `serve-switchyard` subcommand that
/// [`ServerProcess::start`] runs.
#[derive(clap::Args)]
pub struct ServeSwitchyard {
    /// The folder of modules.
    #[arg(long, value_name = "DIR")]
    pub controllers: std::path::PathBuf,
    /// A switchyard.toml to take the settings from.
    #[arg(long, value_name = "FILE")]
    pub config: Option<std::path::PathBuf>,
}

/// The `serve-switchyard` child: Switchyard on `listener` with the modules
/// in `controllers` and the settings of `config` (defaults otherwise),
/// without hot reload; prints `listening on ADDR` once it serves.
pub async fn serve_switchyard(
    listener: tokio::net::TcpListener,
    ServeSwitchyard {
        controllers,
        config,
    }: ServeSwitchyard,
) -> anyhow::Result<()> {
    let config = config.as_deref();
    let addr = listener.local_addr()?;
    let base = match config {
        Some(file) => switchyard::Config::load(file)?,
        None => switchyard::Config::default(),
    };
    let config = switchyard::Config {
        listen: addr,
        controllers,
        hot_reload: false,
        ..base
    };
    let server = switchyard::Server::new(config).await?;
    if let Some(err) = server.rejected().first() {
        bail!("{err}");
    }
    println!("listening on {addr}");
    server.serve(listener, std::future::pending()).await;
    Ok(())
}

/// Serves until stdin closes: the parent closes it (or dies) to stop us.
pub fn exit_when_stdin_closes() {
    std::thread::spawn(|| {
        let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
        std::process::exit(0);
    });
}
