//! Hot reload: the live set of controller modules and the watcher that
//! changes it under running connections.
//!
//! A [`Registry`] holds one entry per module file that went live: its
//! content hash and the [`RouteHandle`] serving it. The watcher
//! feeds changed `*.wasm` paths in; after ~100 ms without further changes
//! each path is applied: a new or changed file is loaded and checked (off the
//! async threads for compilation) and, only if every check passes, swapped
//! into the running instance between two events, or started as a new route;
//! a deleted file retires its route. The routing table is then rebuilt and
//! swapped whole. Every outcome is logged and published as a
//! [`ReloadEvent`].

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use notify::{RecursiveMode, Watcher};
use tokio::sync::{broadcast, mpsc};
use tokio::time::Instant;
use tracing::{error, info, warn};

use crate::journal;
use crate::metrics::ReloadResult;
use crate::routing::route::RouteHandle;
use crate::routing::router::RouteTable;
use crate::runtime::Runtime;
use crate::runtime::module::{self, LoadError, Module, content_hash};

/// Quiet time after the last change to a file before it is applied.
pub const DEBOUNCE: Duration = Duration::from_millis(100);

/// The routing table the server serves from.
pub type Routes = RouteTable<Arc<RouteHandle>>;

/// What happened to a module file.
#[derive(Debug, Clone)]
pub enum ReloadEvent {
    /// A new or changed module is live.
    Live {
        /// The module file.
        file: PathBuf,
        /// Its route name.
        route: String,
        /// The hash of the version it replaced, if it replaced one.
        old_hash: Option<String>,
        /// The hash of the version now serving.
        new_hash: String,
        /// From the first change seen to live.
        elapsed: Duration,
    },
    /// A module failed a check; the running version (if any) keeps serving.
    Rejected {
        /// The module file.
        file: PathBuf,
        /// Why, naming the file.
        error: String,
    },
    /// A deleted module's route was retired.
    Retired {
        /// The module file.
        file: PathBuf,
        /// Its route name.
        route: String,
    },
}

/// How `event` is kept in the journal.
fn journal_entry(event: &ReloadEvent, result: ReloadResult) -> journal::Reload {
    let name = |file: &Path| {
        file.file_name().map_or_else(
            || file.display().to_string(),
            |name| name.to_string_lossy().into_owned(),
        )
    };
    let mut entry = journal::Reload {
        at_ms: journal::now_ms(),
        result: result.label(),
        file: String::new(),
        route: None,
        hash: None,
        took_ms: None,
        error: None,
    };
    match event {
        ReloadEvent::Live {
            file,
            route,
            new_hash,
            elapsed,
            ..
        } => {
            entry.file = name(file);
            entry.route = Some(route.clone());
            entry.hash = Some(new_hash.clone());
            entry.took_ms = Some(elapsed.as_millis() as u64);
        }
        ReloadEvent::Rejected { file, error } => {
            entry.file = name(file);
            entry.error = Some(error.clone());
        }
        ReloadEvent::Retired { file, route } => {
            entry.file = name(file);
            entry.route = Some(route.clone());
        }
    }
    entry
}

struct Entry {
    file: PathBuf,
    hash: String,
    handle: Arc<RouteHandle>,
}

/// The live modules, by file, and the routing table built from them.
pub struct Registry {
    runtime: Arc<Runtime>,
    entries: Vec<Entry>,
    routes: Arc<ArcSwap<Routes>>,
    events: broadcast::Sender<ReloadEvent>,
}

impl Registry {
    /// An empty registry publishing to `routes`.
    pub fn new(runtime: Arc<Runtime>) -> Self {
        Registry {
            runtime,
            entries: Vec::new(),
            routes: Arc::new(ArcSwap::from_pointee(RouteTable::default())),
            events: broadcast::channel(256).0,
        }
    }

    /// The routing table, shared with the accept loop.
    pub fn routes(&self) -> &Arc<ArcSwap<Routes>> {
        &self.routes
    }

    /// Reload outcomes from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<ReloadEvent> {
        self.events.subscribe()
    }

    /// Counts `event` in the metrics and tells the subscribers.
    fn emit(&self, event: ReloadEvent) {
        let result = match &event {
            ReloadEvent::Live { old_hash: None, .. } => ReloadResult::added,
            ReloadEvent::Live { .. } => ReloadResult::swapped,
            ReloadEvent::Rejected { .. } => ReloadResult::rejected,
            ReloadEvent::Retired { .. } => ReloadResult::removed,
        };
        self.runtime.metrics().reload(result);
        self.runtime
            .metrics()
            .journal()
            .reload(journal_entry(&event, result));
        let _ = self.events.send(event);
    }

    fn publish_routes(&self) {
        let table = self
            .entries
            .iter()
            .map(|entry| (entry.handle.module().pattern.clone(), entry.handle.clone()))
            .collect();
        self.routes.store(Arc::new(RouteTable::new(table)));
    }

    /// Checks `candidate` against every live module except the one loaded
    /// from the same file (which it would replace).
    fn admit(&self, candidate: &Module) -> Result<(), LoadError> {
        for entry in self.entries.iter().filter(|e| e.file != candidate.file) {
            let other = entry.handle.module();
            if other.pattern.conflicts_with(&candidate.pattern) {
                return Err(LoadError::RouteTaken {
                    file: candidate.file_name(),
                    route: candidate.pattern.to_string(),
                    other: other.file_name(),
                    other_route: other.pattern.to_string(),
                });
            }
            if other.name == candidate.name {
                return Err(LoadError::NameTaken {
                    file: candidate.file_name(),
                    name: candidate.name.to_string(),
                    other: other.file_name(),
                });
            }
        }
        Ok(())
    }

    /// Loads `file` at start. Errors are returned for the startup report.
    pub async fn add_initial(&mut self, file: &Path) -> Result<(), LoadError> {
        let (module, hash) = self.load_checked(file).await?;
        info!(route = %module.name, pattern = %module.pattern, file = %file.display(), hash = %hash,
            compiled = ?module.compiled, "controller loaded");
        let handle = RouteHandle::new(self.runtime.clone(), Arc::new(module));
        self.entries.push(Entry {
            file: file.to_owned(),
            hash,
            handle,
        });
        self.publish_routes();
        Ok(())
    }

    async fn load_checked(&self, file: &Path) -> Result<(Module, String), LoadError> {
        let (module, hash) = module::load(&self.runtime, file).await?;
        self.admit(&module)?;
        Ok((module, hash))
    }

    /// Applies a change to `file` first seen at `since`.
    pub async fn apply(&mut self, file: &Path, since: Instant) {
        let index = self.entries.iter().position(|e| e.file == file);
        if !file.exists() {
            if let Some(index) = index {
                let entry = self.entries.remove(index);
                self.publish_routes();
                let route = entry.handle.module().name.to_string();
                entry.handle.retire().await;
                info!(route = %route, file = %file.display(), hash = %entry.hash, "module removed: route retired");
                self.emit(ReloadEvent::Retired {
                    file: file.to_owned(),
                    route,
                });
            }
            return;
        }
        // Editors and copies touch files without changing them: compare
        // the bytes before compiling anything.
        if let (Some(index), Ok(bytes)) = (index, std::fs::read(file))
            && self.entries[index].hash == content_hash(&bytes)
        {
            return;
        }
        let result = self.load_checked(file).await;
        let (module, hash) = match result {
            Ok(loaded) => loaded,
            Err(err) => {
                if index.is_some() {
                    error!("{err}; the running version keeps serving");
                } else {
                    error!("{err}");
                }
                self.emit(ReloadEvent::Rejected {
                    file: file.to_owned(),
                    error: err.to_string(),
                });
                return;
            }
        };
        let module = Arc::new(module);
        let old_hash = match index {
            Some(index) if self.entries[index].hash == hash => return, // same bytes
            Some(index) => {
                let entry = &mut self.entries[index];
                if let Err(reason) = entry.handle.swap(module.clone()).await {
                    let error = format!(
                        "{}: {reason}; the running version keeps serving",
                        file.display()
                    );
                    error!("{error}");
                    self.emit(ReloadEvent::Rejected {
                        file: file.to_owned(),
                        error,
                    });
                    return;
                }
                Some(std::mem::replace(&mut entry.hash, hash.clone()))
            }
            None => {
                let handle = RouteHandle::new(self.runtime.clone(), module.clone());
                self.entries.push(Entry {
                    file: file.to_owned(),
                    hash: hash.clone(),
                    handle,
                });
                None
            }
        };
        self.publish_routes();
        let elapsed = since.elapsed();
        info!(route = %module.name, pattern = %module.pattern, file = %file.display(),
            old_hash = old_hash.as_deref().unwrap_or("-"), new_hash = %hash, compiled = ?module.compiled,
            ms = elapsed.as_secs_f64() * 1000.0, "module reloaded: new version live");
        self.emit(ReloadEvent::Live {
            file: file.to_owned(),
            route: module.name.to_string(),
            old_hash,
            new_hash: hash,
            elapsed,
        });
    }
}

/// Whether a path is a module file (`*.wasm`, not hidden).
fn is_module(path: &Path) -> bool {
    path.extension().is_some_and(|ext| ext == "wasm")
        && !path
            .file_name()
            .is_some_and(|name| name.to_string_lossy().starts_with('.'))
}

/// A change to a module file, as the folder watcher saw it.
#[derive(Debug)]
pub struct Change {
    /// The module file.
    pub path: PathBuf,
    /// When the watcher saw it.
    pub seen: Instant,
    /// Renamed into place: the file is complete, no need to wait.
    pub atomic: bool,
}

/// Watches `dir` for module changes. Keep the returned watcher alive;
/// changes arrive on the receiver.
pub fn watch_modules(
    dir: &Path,
) -> notify::Result<(notify::RecommendedWatcher, mpsc::UnboundedReceiver<Change>)> {
    let (tx, rx) = mpsc::unbounded_channel();
    let mut watcher =
        notify::recommended_watcher(move |event: notify::Result<notify::Event>| match event {
            // Reads (ours included) are not changes.
            Ok(event) if event.kind.is_access() => {}
            Ok(event) => {
                let now = Instant::now();
                let atomic = matches!(
                    event.kind,
                    notify::EventKind::Modify(notify::event::ModifyKind::Name(
                        notify::event::RenameMode::To | notify::event::RenameMode::Both
                    ))
                );
                for path in event.paths.into_iter().filter(|p| is_module(p)) {
                    let _ = tx.send(Change {
                        path,
                        seen: now,
                        atomic,
                    });
                }
            }
            Err(err) => warn!(error = %err, "file watcher error"),
        })?;
    watcher.watch(dir, RecursiveMode::NonRecursive)?;
    Ok((watcher, rx))
}

/// Applies changes from `changes` to `registry` until the sender is gone:
/// a file written in place once it has been quiet for [`DEBOUNCE`], a file
/// renamed into place (complete by construction) at once.
pub async fn run(mut registry: Registry, mut changes: mpsc::UnboundedReceiver<Change>) {
    // Path -> (first seen, due).
    let mut pending: HashMap<PathBuf, (Instant, Instant)> = HashMap::new();
    loop {
        let next_due = pending.values().map(|(_, due)| *due).min();
        tokio::select! {
            change = changes.recv() => match change {
                Some(Change { path, seen, atomic }) => {
                    let due = if atomic { seen } else { seen + DEBOUNCE };
                    let entry = pending.entry(path).or_insert((seen, due));
                    entry.1 = due;
                }
                None => return,
            },
            () = tokio::time::sleep_until(next_due.unwrap_or_else(Instant::now)), if next_due.is_some() => {
                let now = Instant::now();
                let due: Vec<PathBuf> = pending
                    .iter()
                    .filter(|(_, (_, due))| *due <= now)
                    .map(|(path, _)| path.clone())
                    .collect();
                for path in due {
                    let (first, _) = pending.remove(&path).expect("pending path");
                    registry.apply(&path, first).await;
                }
            }
        }
    }
}

/// `up` mode: rebuilds the controllers (Rust crates, Python and JavaScript projects) under `dir` whenever one of
/// their sources changes. Runs on its own thread; a failed build prints the
/// compiler's errors and leaves the running modules alone.
pub fn watch_sources(dir: PathBuf) -> anyhow::Result<()> {
    let (tx, rx) = std::sync::mpsc::channel::<PathBuf>();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if let Ok(event) = event.as_ref()
            && !event.kind.is_access()
        {
            for path in event.paths.iter().cloned() {
                let _ = tx.send(path);
            }
        }
    })?;
    watcher.watch(&dir, RecursiveMode::Recursive)?;
    let is_source = {
        let dir = dir.clone();
        move |path: &Path| {
            let Ok(rel) = path.strip_prefix(&dir) else {
                return false;
            };
            let in_target = rel.components().any(|c| {
                matches!(
                    c.as_os_str().to_str(),
                    Some("target" | "__pycache__" | "node_modules")
                )
            });
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let source = name.ends_with(".rs")
                || name == "Cargo.toml"
                || name.ends_with(".wit")
                || name.ends_with(".py")
                || name == "pyproject.toml"
                || name.ends_with(".js")
                || name.ends_with(".mjs")
                || name == "package.json";
            !in_target && source
        }
    };
    std::thread::Builder::new()
        .name("switchyard-sources".into())
        .spawn(move || {
            let _watcher = watcher;
            while let Ok(path) = rx.recv() {
                tracing::debug!(path = %path.display(), "controller folder changed");
                if !is_source(&path) {
                    continue;
                }
                // Let a burst of saves settle.
                while rx.recv_timeout(Duration::from_millis(200)).is_ok() {}
                info!(changed = %path.display(), "controller sources changed: rebuilding");
                match crate::build_controllers(&dir) {
                    Ok(placed) => info!(modules = placed.len(), "rebuild done"),
                    Err(err) => error!("{err:#}; the running modules keep serving"),
                }
            }
        })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_paths() {
        assert!(is_module(Path::new("/c/chat.wasm")));
        assert!(!is_module(Path::new("/c/.chat.wasm.tmp")));
        assert!(!is_module(Path::new("/c/.chat.wasm")));
        assert!(!is_module(Path::new("/c/chat.wasm.part")));
        assert!(!is_module(Path::new("/c/Cargo.toml")));
    }
}
