//! Compiled modules on disk, so that a restart or a reload of an unchanged
//! module compiles nothing.
//!
//! An entry is wasmtime's serialized component for one module, named by the
//! SHA-256 of the module's bytes, in a folder named for this wasmtime's
//! version and the engine's compilation settings
//! (`Engine::precompile_compatibility_hash`): an entry made by another
//! wasmtime or with other settings is never even looked at. A file holds a
//! magic line, the SHA-256 of the artifact and the artifact. Loading an
//! artifact runs native code from it, so one whose checksum does not match
//! (a torn write, a flipped bit, a stray file) is deleted and rebuilt, never
//! handed to wasmtime; one that wasmtime refuses anyway is rebuilt too.
//! Entries are written to a temporary file and renamed into place, so
//! servers sharing the folder never read half an entry.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use sha2::{Digest, Sha256};
use tracing::{debug, warn};
use wasmtime::Engine;
use wasmtime::component::Component;

/// The first bytes of every entry.
const MAGIC: &[u8] = b"switchyard-compiled-component-1\n";

/// How a module's compiled code was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compiled {
    /// Read from the cache.
    Cached,
    /// Compiled (and stored, when the cache is on).
    Fresh,
}

/// The compiled-module cache of one engine.
pub struct ModuleCache {
    /// `<root>/<wasmtime version>-<settings hash>`.
    dir: PathBuf,
}

impl ModuleCache {
    /// The cache under `root` for `engine`'s settings.
    pub fn new(root: &Path, engine: &Engine) -> ModuleCache {
        let mut settings = DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut settings);
        let dir = root.join(format!(
            "wasmtime-{}-{:016x}",
            wasmtime_version(),
            settings.finish()
        ));
        ModuleCache { dir }
    }

    /// The component `bytes` make: from the cache when a sound entry is
    /// there, compiled (and stored) otherwise. Blocking: run it off the
    /// async threads.
    pub fn component(
        &self,
        engine: &Engine,
        bytes: &[u8],
    ) -> wasmtime::Result<(Component, Compiled)> {
        let entry = self
            .dir
            .join(format!("{}.cwasm", hex(&Sha256::digest(bytes))));
        if let Some(component) = self.read(engine, &entry) {
            return Ok((component, Compiled::Cached));
        }
        let component = Component::new(engine, bytes)?;
        match component.serialize() {
            Ok(artifact) => {
                if let Err(err) = self.write(&entry, &artifact) {
                    warn!(entry = %entry.display(), error = %err,
                        "cannot store the compiled module; the next start compiles it again");
                }
            }
            Err(err) => warn!(error = %format!("{err:#}"), "cannot serialize a compiled module"),
        }
        Ok((component, Compiled::Fresh))
    }

    /// The component in `entry`, if it is there and sound; an unsound
    /// entry is removed.
    fn read(&self, engine: &Engine, entry: &Path) -> Option<Component> {
        let data = std::fs::read(entry).ok()?;
        let Some(artifact) = checked(&data) else {
            warn!(entry = %entry.display(), "corrupt compiled-module cache entry: removed, compiling again");
            let _ = std::fs::remove_file(entry);
            return None;
        };
        // SAFETY: wasmtime requires that the bytes come from
        // `Component::serialize` of a compatible engine. They do: the entry
        // was written by `write` below from `serialize`'s output, its
        // checksum matches, and its folder is named for this wasmtime and
        // these engine settings. wasmtime still checks the version and the
        // settings it records, and refuses what does not match.
        match unsafe { Component::deserialize(engine, artifact) } {
            Ok(component) => Some(component),
            Err(err) => {
                warn!(entry = %entry.display(), error = %format!("{err:#}"),
                    "stale compiled-module cache entry: removed, compiling again");
                let _ = std::fs::remove_file(entry);
                None
            }
        }
    }

    fn write(&self, entry: &Path, artifact: &[u8]) -> std::io::Result<()> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        std::fs::create_dir_all(&self.dir)?;
        let temporary = self.dir.join(format!(
            ".{}-{}.tmp",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let written = (|| {
            let mut file = std::fs::File::create(&temporary)?;
            file.write_all(MAGIC)?;
            file.write_all(&Sha256::digest(artifact))?;
            file.write_all(artifact)?;
            file.sync_all()?;
            std::fs::rename(&temporary, entry)
        })();
        match &written {
            Ok(()) => {
                debug!(entry = %entry.display(), bytes = artifact.len(), "compiled module stored")
            }
            Err(_) => {
                let _ = std::fs::remove_file(&temporary);
            }
        }
        written
    }
}

/// The artifact in an entry's `data`, if its magic and checksum hold.
fn checked(data: &[u8]) -> Option<&[u8]> {
    let rest = data.strip_prefix(MAGIC)?;
    let (sum, artifact) = rest.split_at_checked(32)?;
    (Sha256::digest(artifact).as_slice() == sum).then_some(artifact)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// The wasmtime this server runs on (its crate version).
fn wasmtime_version() -> &'static str {
    // wasmtime is pinned with `=` in the workspace manifest; this is the
    // same number, checked by a test against Cargo.lock.
    "48.0.8"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_is_checked_before_use() {
        let artifact = b"compiled code".as_slice();
        let mut entry = MAGIC.to_vec();
        entry.extend_from_slice(&Sha256::digest(artifact));
        entry.extend_from_slice(artifact);
        assert_eq!(checked(&entry), Some(artifact));
        let mut flipped = entry.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert_eq!(checked(&flipped), None);
        assert_eq!(checked(&entry[..entry.len() - 1]), None);
        assert_eq!(checked(&entry[..MAGIC.len() + 10]), None);
        assert_eq!(checked(b"something else"), None);
    }

    #[test]
    fn the_version_in_folder_names_is_the_locked_one() {
        let lock =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.lock")).unwrap();
        let locked = lock
            .split("[[package]]")
            .find(|package| package.contains("name = \"wasmtime\"\n"))
            .and_then(|package| package.lines().find_map(|l| l.strip_prefix("version = ")))
            .unwrap();
        assert_eq!(locked.trim_matches('"'), wasmtime_version());
    }
}
