//! Loading a controller module: from a `.wasm` file to a checked, ready to
//! instantiate component with its route.
//!
//! [`load`] compiles off the async threads, links against the host's imports,
//! checks that the component exports the controller world, instantiates it
//! once and asks `describe()` for its route. Any failure is a [`LoadError`]
//! naming the file and what to do; the server keeps serving its other
//! controllers.

use std::hash::{DefaultHasher, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::config::InstanceMode;
use crate::runtime::Runtime;
use crate::runtime::bindings::ControllerPre;
use crate::runtime::cache::Compiled;
use crate::runtime::host_api::HostState;
use switchyard_grammar::{PatternError, RoutePattern};

/// Why a module was not loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be read.
    #[error("{file}: cannot read the module: {reason}")]
    Read {
        /// The module file.
        file: String,
        /// The I/O error.
        reason: String,
    },
    /// The bytes are not a WebAssembly component wasmtime accepts.
    #[error(
        "{file}: not a valid WebAssembly component ({reason}); build controllers with \
         `switchyard build` or `cargo build --target wasm32-wasip2`"
    )]
    Invalid {
        /// The module file.
        file: String,
        /// What the compiler said.
        reason: String,
    },
    /// The component does not fit the controller world.
    #[error(
        "{file}: does not implement the world switchyard:controller/controller@0.3.1 \
         ({reason}); build it against wit/switchyard.wit, e.g. with switchyard-sdk"
    )]
    WrongWorld {
        /// The module file.
        file: String,
        /// The missing or mismatched import or export.
        reason: String,
    },
    /// Instantiating or calling `describe()` failed.
    #[error("{file}: {stage} failed: {reason}")]
    Start {
        /// The module file.
        file: String,
        /// `instantiation` or `describe()`.
        stage: &'static str,
        /// The trap or error.
        reason: String,
    },
    /// `describe()` returned an unusable route.
    #[error("{file}: {source}")]
    Route {
        /// The module file.
        file: String,
        /// What is wrong with the pattern.
        source: PatternError,
    },
    /// `describe()` returned an empty or malformed name.
    #[error(
        "{file}: invalid route name `{name}`: use letters, digits, `-`, `_` and `.`, 1 to 64 of them"
    )]
    Name {
        /// The module file.
        file: String,
        /// The name as returned.
        name: String,
    },
    /// Another module already serves the same route pattern.
    #[error(
        "{file}: route `{route}` is already served by {other} (route `{other_route}`); \
         change the route of one of them"
    )]
    RouteTaken {
        /// The module that was refused.
        file: String,
        /// Its route.
        route: String,
        /// The module that keeps the route.
        other: String,
        /// The pattern it serves.
        other_route: String,
    },
    /// The instance mode cannot work with the route.
    #[error("{file}: {reason}")]
    Instance {
        /// The module file.
        file: String,
        /// What does not fit.
        reason: String,
    },
    /// Another module already uses the same route name.
    #[error(
        "{file}: route name `{name}` is already used by {other}; give one of them another name"
    )]
    NameTaken {
        /// The module that was refused.
        file: String,
        /// The duplicated name.
        name: String,
        /// The module that keeps the name.
        other: String,
    },
}

/// A loaded, checked controller module.
pub struct Module {
    /// Where it was loaded from.
    pub file: PathBuf,
    /// Ready-to-instantiate component, imports resolved.
    pub(crate) pre: ControllerPre<HostState>,
    /// The route pattern from `describe()`.
    pub pattern: RoutePattern,
    /// The route name from `describe()`.
    pub name: Arc<str>,
    /// Roles of which a client needs one; empty means anyone.
    pub is_granted: Vec<String>,
    /// How instances are created: the controller's declaration, or the
    /// config's override for this route name.
    pub instance: InstanceMode,
    /// Whether its code came from the compiled-module cache.
    pub compiled: Compiled,
    /// The hash of the bytes it was built from ([`content_hash`]).
    pub hash: String,
}

impl Module {
    /// The file name, for messages.
    pub fn file_name(&self) -> String {
        self.file.display().to_string()
    }
}

fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// A hex digest of a module's bytes, for logs and to skip no-op changes.
pub fn content_hash(bytes: &[u8]) -> String {
    let mut hasher = DefaultHasher::new();
    hasher.write(bytes);
    format!("{:016x}", hasher.finish())
}

/// Loads and checks the module at `path`; returns it with the hash of the
/// bytes it was built from.
pub async fn load(runtime: &Arc<Runtime>, path: &Path) -> Result<(Module, String), LoadError> {
    let file = path.display().to_string();
    let bytes = tokio::fs::read(path).await.map_err(|err| LoadError::Read {
        file: file.clone(),
        reason: err.to_string(),
    })?;
    let hash = content_hash(&bytes);
    let compiling = runtime.clone();
    let (component, compiled) = tokio::task::spawn_blocking(move || compiling.compile(&bytes))
        .await
        .expect("compile task panicked")
        .map_err(|err| LoadError::Invalid {
            file: file.clone(),
            // On one line: the parser's message spreads byte arrays over
            // many.
            reason: format!("{err:#}")
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" "),
        })?;
    let wrong_world = |err: wasmtime::Error| LoadError::WrongWorld {
        file: file.clone(),
        reason: format!("{err:#}"),
    };
    let instance_pre = runtime
        .linker()
        .instantiate_pre(&component)
        .map_err(wrong_world)?;
    let pre = ControllerPre::new(instance_pre).map_err(wrong_world)?;

    let mut store = runtime.new_store(Arc::from("(describe)"), runtime.detached_owned());
    runtime.arm_budget(&mut store);
    let start = |stage: &'static str| {
        let file = file.clone();
        move |err: wasmtime::Error| LoadError::Start {
            file,
            stage,
            reason: format!("{err:#}"),
        }
    };
    let controller = pre
        .instantiate_async(&mut store)
        .await
        .map_err(start("instantiation"))?;
    runtime.arm_budget(&mut store);
    let info = controller
        .call_describe(&mut store)
        .await
        .map_err(start("describe()"))?;

    let pattern = RoutePattern::parse(&info.route).map_err(|source| LoadError::Route {
        file: file.clone(),
        source,
    })?;
    if !valid_name(&info.name) {
        return Err(LoadError::Name {
            file,
            name: info.name,
        });
    }
    let declared = InstanceMode::from(info.instance);
    let instance = runtime
        .config()
        .route_instance(&info.name, &declared, &pattern)
        .map_err(|err| LoadError::Instance {
            file: file.clone(),
            reason: err.to_string(),
        })?;
    let module = Module {
        file: path.to_owned(),
        pre,
        pattern,
        name: Arc::from(info.name),
        is_granted: info.is_granted,
        instance,
        compiled,
        hash: hash.clone(),
    };
    Ok((module, hash))
}

/// Creates `count` instances of the module at `path`, spread over
/// `parallel` tasks, each in a fresh store exactly as a new keyed instance
/// gets one, and returns the wall time. For the benchmarks: it shows what
/// the allocation strategy in `config.sandbox` costs per instance.
#[cfg(feature = "bench")]
pub async fn time_instantiation(
    config: crate::Config,
    path: &Path,
    count: usize,
    parallel: usize,
) -> anyhow::Result<std::time::Duration> {
    let runtime = Runtime::new(Arc::new(config))?;
    let (module, _) = load(&runtime, path).await?;
    let module = Arc::new(module);
    let parallel = parallel.max(1);
    let start = std::time::Instant::now();
    let tasks: Vec<_> = (0..parallel)
        .map(|task| {
            let (runtime, module) = (runtime.clone(), module.clone());
            let share = count / parallel + usize::from(task < count % parallel);
            tokio::spawn(async move {
                for _ in 0..share {
                    let mut store =
                        runtime.new_store(module.name.clone(), runtime.detached_owned());
                    runtime.arm_budget(&mut store);
                    module
                        .pre
                        .instantiate_async(&mut store)
                        .await
                        .map_err(|err| anyhow::anyhow!("instantiation failed: {err:#}"))?;
                }
                anyhow::Ok(())
            })
        })
        .collect();
    for task in tasks {
        task.await??;
    }
    Ok(start.elapsed())
}

/// Runs `count` `on-message` events carrying a binary message of
/// `payload` bytes through one instance of the module at `path`, exactly as
/// a connection's task runs its own event when the instance is free (see
/// [`crate::runtime::probe`]), with no socket, and returns the wall time.
/// For the benchmarks: it is what the WebAssembly layer adds to every
/// message, the part a hand-written server does not pay.
#[cfg(feature = "bench")]
pub async fn time_events(
    config: crate::Config,
    path: &Path,
    count: usize,
    payload: usize,
) -> anyhow::Result<std::time::Duration> {
    use tokio_tungstenite::tungstenite::{Bytes, Message as WsMessage};

    let probe = crate::runtime::probe::Probe::load(config, path).await?;
    let mut conn = probe.open().await;
    let payload = Bytes::from(vec![b'x'; payload]);
    let mut replies = 0;
    let start = std::time::Instant::now();
    for _ in 0..count {
        let msg = WsMessage::Binary(payload.clone());
        replies += usize::from(conn.message(msg).await.is_some());
    }
    let took = start.elapsed();
    conn.close().await;
    anyhow::ensure!(
        replies == count,
        "the controller answered {replies} of {count} messages; time it with an echo controller"
    );
    Ok(took)
}

/// What entering the guest costs, without the rest of an event: `count`
/// `on-message` calls with a binary message of `payload` bytes on one
/// instance of the module at `path`, made with `call_async` (on a fiber,
/// as the server makes every call) and with the synchronous `call`,
/// alternating in blocks of 1,000. Both go through the same engine,
/// instance and store: WASI is linked synchronously and the epoch deadline
/// traps instead of yielding, which is what a synchronous call needs (the
/// server's own store yields at every tick, so it cannot make one).
/// Returns the time of the async calls and of the sync ones.
#[cfg(feature = "bench")]
pub async fn time_call_modes(
    config: crate::Config,
    path: &Path,
    count: usize,
    payload: usize,
) -> anyhow::Result<(std::time::Duration, std::time::Duration)> {
    use tokio_tungstenite::tungstenite::{Bytes, Message as WsMessage};
    use wasmtime::component::{HasSelf, Linker};

    use crate::runtime::bindings::{Controller, OnMessage};

    let runtime = Runtime::new(Arc::new(config))?;
    let bytes = std::fs::read(path)?;
    let (component, _) = runtime
        .compile(&bytes)
        .map_err(|err| anyhow::anyhow!("{err:#}"))?;
    let mut linker = Linker::new(runtime.engine());
    wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(|err| anyhow::anyhow!("{err:#}"))?;
    Controller::add_to_linker::<_, HasSelf<_>>(&mut linker, |state| state)
        .map_err(|err| anyhow::anyhow!("{err:#}"))?;
    let mut store = runtime.new_store(Arc::from("bench"), runtime.detached_owned());
    store.epoch_deadline_trap();
    store.set_epoch_deadline(u64::MAX / 2);
    let controller = Controller::instantiate(&mut store, &component, &linker)
        .map_err(|err| anyhow::anyhow!("{err:#}"))?;
    let on_message =
        OnMessage::new(&controller, &store).map_err(|err| anyhow::anyhow!("{err:#}"))?;
    let frame = WsMessage::Binary(Bytes::from(vec![b'x'; payload]));
    let (mut in_async, mut in_sync) = (std::time::Duration::ZERO, std::time::Duration::ZERO);
    let block = 1_000;
    for _ in 0..count.div_ceil(block) {
        let start = std::time::Instant::now();
        for _ in 0..block {
            let reply = on_message.call(&mut store, 1, &frame).await;
            anyhow::ensure!(matches!(reply, Some(Ok(Some(_)))), "no echo (async)");
        }
        in_async += start.elapsed();
        let start = std::time::Instant::now();
        for _ in 0..block {
            let reply = on_message.call_sync(&mut store, 1, &frame);
            anyhow::ensure!(matches!(reply, Some(Ok(Some(_)))), "no echo (sync)");
        }
        in_sync += start.elapsed();
    }
    Ok((in_async, in_sync))
}

#[cfg(test)]
mod tests {
    use super::{content_hash, valid_name};

    #[test]
    fn hashes_differ_by_content() {
        assert_eq!(content_hash(b"abc"), content_hash(b"abc"));
        assert_ne!(content_hash(b"abc"), content_hash(b"abd"));
        assert_eq!(content_hash(b"").len(), 16);
    }

    #[test]
    fn route_names() {
        assert!(valid_name("chat"));
        assert!(valid_name("rooms-v2.beta_1"));
        assert!(!valid_name(""));
        assert!(!valid_name("has space"));
        assert!(!valid_name("slash/y"));
        assert!(!valid_name(&"x".repeat(65)));
    }
}
