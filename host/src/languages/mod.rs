//! Controllers in Python and JavaScript: the same WIT world, other
//! languages, built by `switchyard build` and `up` next to the Rust crates.
//!
//! A project is a folder under the controllers folder: `pyproject.toml`
//! and `app.py` for Python ([`python`], componentize-py), `package.json`
//! and `app.js` for JavaScript ([`javascript`], ComponentizeJS). Its
//! manifest's name names the module, `<controllers>/<name>.wasm`.
//!
//! What the two share lives here: finding projects, the SDK files (part of
//! this binary, written out before a build, so an author needs nothing
//! from this repository), the place for the tools (`.switchyard/<lang>`
//! beside the controllers folder, filled on first use), and the
//! fingerprint that skips a build when nothing it depends on changed:
//! these tools take seconds per module, and `up` builds every controller
//! at each start. A language whose tool cannot be had is skipped with one
//! line saying what to install; everything else is built and served.

pub mod javascript;
pub mod python;

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use sha2::{Digest, Sha256};

/// A controller project and its module name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Project {
    /// The folder with the manifest and the entry file.
    pub dir: PathBuf,
    /// The manifest's name: the module is `<name>.wasm`.
    pub name: String,
}

/// How one language's projects are found and described.
struct Kind {
    /// The manifest that marks a project (`pyproject.toml`).
    manifest: &'static str,
    /// The file that holds the controller (`app.py`).
    entry: &'static str,
    /// Reads the module name from the manifest's text.
    name: fn(&str) -> Option<String>,
}

/// The projects of `kind` under `dir`, sorted by folder.
fn projects(dir: &Path, kind: &Kind) -> anyhow::Result<Vec<Project>> {
    let entries = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read the controllers folder {}", dir.display()))?;
    let mut found = Vec::new();
    for folder in entries.filter_map(|entry| entry.ok().map(|e| e.path())) {
        let manifest = folder.join(kind.manifest);
        if !manifest.is_file() {
            continue;
        }
        if !folder.join(kind.entry).is_file() {
            bail!(
                "{} has a {} but no {}: put the controller there",
                folder.display(),
                kind.manifest,
                kind.entry
            );
        }
        let text = std::fs::read_to_string(&manifest)
            .with_context(|| format!("cannot read {}", manifest.display()))?;
        let name = (kind.name)(&text)
            .with_context(|| format!("{} names no project", manifest.display()))?;
        let valid = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !valid {
            bail!(
                "{}: the name {name:?} must be letters, digits, '-', '_' or '.' (it names the module)",
                manifest.display()
            );
        }
        found.push(Project { dir: folder, name });
    }
    found.sort_by(|a, b| a.dir.cmp(&b.dir));
    Ok(found)
}

/// Where the tools of `language` go for the controllers folder `dir`.
fn tools_dir(dir: &Path, language: &str) -> PathBuf {
    dir.parent()
        .unwrap_or(dir)
        .join(".switchyard")
        .join(language)
}

/// Writes `files` (path under `root`, text) where they differ.
fn write_files(root: &Path, files: &[(&str, &str)]) -> anyhow::Result<()> {
    for (path, text) in files {
        let file = root.join(path);
        if std::fs::read_to_string(&file).is_ok_and(|old| old == *text) {
            continue;
        }
        std::fs::create_dir_all(file.parent().expect("files are in folders"))?;
        std::fs::write(&file, text).with_context(|| format!("cannot write {}", file.display()))?;
    }
    Ok(())
}

/// The files of `project` a build reads: those ending in one of
/// `extensions`, outside hidden folders, caches and `node_modules`, sorted.
fn sources(project: &Path, extensions: &[&str]) -> anyhow::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    let mut folders = vec![project.to_owned()];
    while let Some(folder) = folders.pop() {
        for entry in std::fs::read_dir(&folder)?.filter_map(Result::ok) {
            let path = entry.path();
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with('.') || name == "__pycache__" || name == "node_modules" {
                continue;
            }
            if path.is_dir() {
                folders.push(path);
            } else if extensions.iter().any(|ext| name.ends_with(ext)) {
                files.push(path);
            }
        }
    }
    files.sort();
    Ok(files)
}

/// A digest of what a build of `project` depends on: its sources, the
/// SDK's files and the tool's version.
fn fingerprint(
    project: &Path,
    extensions: &[&str],
    sdk: &[(&str, &str)],
    tool: &str,
) -> anyhow::Result<String> {
    let mut hash = Sha256::new();
    hash.update(tool);
    for (path, text) in sdk {
        hash.update(path);
        hash.update(text);
    }
    for file in sources(project, extensions)? {
        hash.update(
            file.strip_prefix(project)
                .unwrap_or(&file)
                .to_string_lossy()
                .as_bytes(),
        );
        hash.update(std::fs::read(&file)?);
    }
    Ok(format!("{:x}", hash.finalize()))
}

/// The temporary file a module is built into before its rename to `out`,
/// so that a watcher never sees half a module.
fn temporary(out: &Path) -> PathBuf {
    out.with_file_name(format!(
        ".{}.tmp",
        out.file_name().unwrap_or_default().to_string_lossy()
    ))
}

/// Builds with `build` each of `projects` whose fingerprint changed since
/// its last build (recorded under `tools`), and returns every module.
fn build_changed(
    dir: &Path,
    tools: &Path,
    projects: &[Project],
    fingerprint_of: impl Fn(&Project) -> anyhow::Result<String>,
    build: impl Fn(&Project, &Path) -> anyhow::Result<()>,
) -> anyhow::Result<Vec<PathBuf>> {
    let mut placed = Vec::new();
    for project in projects {
        let out = dir.join(format!("{}.wasm", project.name));
        let stamp = tools.join("built").join(&project.name);
        let fingerprint = fingerprint_of(project)?;
        let current =
            out.is_file() && std::fs::read_to_string(&stamp).is_ok_and(|old| old == fingerprint);
        if !current {
            eprintln!(
                "switchyard: building the controller {}",
                project.dir.display()
            );
            let tmp = temporary(&out);
            if let Err(err) = build(project, &tmp) {
                let _ = std::fs::remove_file(&tmp);
                return Err(err);
            }
            std::fs::rename(&tmp, &out)
                .with_context(|| format!("cannot move {} to {}", tmp.display(), out.display()))?;
            std::fs::create_dir_all(stamp.parent().expect("in a folder"))?;
            std::fs::write(&stamp, &fingerprint)?;
        }
        placed.push(out);
    }
    Ok(placed)
}

/// Builds the Python and JavaScript projects under `dir`.
pub fn build_projects(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut placed = python::build_projects(dir)?;
    placed.extend(javascript::build_projects(dir)?);
    Ok(placed)
}

/// Whether `dir` holds any Python or JavaScript project.
pub fn has_projects(dir: &Path) -> anyhow::Result<bool> {
    Ok(!python::projects(dir)?.is_empty() || !javascript::projects(dir)?.is_empty())
}
