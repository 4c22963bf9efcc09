//! Python controllers: a folder under the controllers folder holding a
//! `pyproject.toml` (its `[project] name` names the module) and an
//! `app.py` that declares its class with `@switchyard.route`, built with
//! componentize-py into `<controllers>/<name>.wasm`.
//!
//! The SDK (`guest-sdk/python`: the `switchyard` package, the entry module
//! componentize-py builds, and the WIT world) is part of this binary and
//! written out next to the tools before a build, so a controller author
//! needs nothing from this repository. componentize-py comes from
//! `SWITCHYARD_COMPONENTIZE_PY` when set (the tests' virtual environment),
//! else from a virtual environment made on first use in `.switchyard/python`
//! beside the controllers folder. Where that cannot be made (no `python3`
//! with `venv`, no network), the Python controllers are skipped with one
//! line saying what to install, and everything else is built and served.
//!
//! A project is rebuilt only when its sources, the SDK or the tool changed
//! (a SHA-256 of them is kept beside the tools): componentize-py takes
//! seconds, and `up` builds every controller at each start.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, bail};
use sha2::{Digest, Sha256};

/// The componentize-py release the SDK is written and tested against.
pub const COMPONENTIZE_PY: &str = "componentize-py==0.25.1";

/// The SDK's files, by their path under the SDK folder.
const SDK: [(&str, &str); 4] = [
    (
        "switchyard/__init__.py",
        include_str!("../../guest-sdk/python/switchyard/__init__.py"),
    ),
    (
        "switchyard/_world.py",
        include_str!("../../guest-sdk/python/switchyard/_world.py"),
    ),
    (
        "switchyard_entry.py",
        include_str!("../../guest-sdk/python/switchyard_entry.py"),
    ),
    (
        "wit/switchyard.wit",
        include_str!("../../wit/switchyard.wit"),
    ),
];

/// A Python controller's folder and its module name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Project {
    /// The folder with `pyproject.toml` and `app.py`.
    pub dir: PathBuf,
    /// `[project] name`: the module is `<name>.wasm`.
    pub name: String,
}

/// The Python controllers under `dir`, sorted by folder.
pub fn projects(dir: &Path) -> anyhow::Result<Vec<Project>> {
    let entries = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read the controllers folder {}", dir.display()))?;
    let mut found = Vec::new();
    for folder in entries.filter_map(|entry| entry.ok().map(|e| e.path())) {
        let manifest = folder.join("pyproject.toml");
        if !manifest.is_file() {
            continue;
        }
        if !folder.join("app.py").is_file() {
            bail!(
                "{} is a Python controller without its app.py: put the controller class there",
                folder.display()
            );
        }
        found.push(Project {
            name: project_name(&manifest)?,
            dir: folder,
        });
    }
    found.sort_by(|a, b| a.dir.cmp(&b.dir));
    Ok(found)
}

/// `[project] name` of a `pyproject.toml`, as a module name.
fn project_name(manifest: &Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(manifest)
        .with_context(|| format!("cannot read {}", manifest.display()))?;
    let table: toml::Table = toml::from_str(&text)
        .with_context(|| format!("{} is not valid TOML", manifest.display()))?;
    let name = table
        .get("project")
        .and_then(|project| project.get("name"))
        .and_then(|name| name.as_str())
        .with_context(|| format!("{} has no [project] name", manifest.display()))?;
    let valid = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !valid {
        bail!(
            "{}: [project] name {name:?} must be letters, digits, '-', '_' or '.'",
            manifest.display()
        );
    }
    Ok(name.to_owned())
}

/// Where the tools and the SDK go for the controllers folder `dir`.
fn tools_dir(dir: &Path) -> PathBuf {
    dir.parent()
        .unwrap_or(dir)
        .join(".switchyard")
        .join("python")
}

/// Writes the SDK under `root` (only the files that differ) and returns
/// its folder.
pub fn write_sdk(root: &Path) -> anyhow::Result<PathBuf> {
    let sdk = root.join("sdk");
    for (path, text) in SDK {
        let file = sdk.join(path);
        if std::fs::read_to_string(&file).is_ok_and(|old| old == text) {
            continue;
        }
        std::fs::create_dir_all(file.parent().expect("SDK files are in folders"))?;
        std::fs::write(&file, text).with_context(|| format!("cannot write {}", file.display()))?;
    }
    Ok(sdk)
}

/// componentize-py: the one `SWITCHYARD_COMPONENTIZE_PY` names, or the one
/// in the virtual environment under `root`, made and filled on first use.
pub fn componentize_py(root: &Path) -> anyhow::Result<PathBuf> {
    if let Some(tool) = std::env::var_os("SWITCHYARD_COMPONENTIZE_PY") {
        let tool = PathBuf::from(tool);
        if tool.is_file() {
            return Ok(tool);
        }
        bail!(
            "SWITCHYARD_COMPONENTIZE_PY is {}, which does not exist",
            tool.display()
        );
    }
    let venv = root.join("venv");
    let tool = venv.join("bin/componentize-py");
    let stamp = venv.join(".installed");
    if tool.is_file() && std::fs::read_to_string(&stamp).is_ok_and(|s| s == COMPONENTIZE_PY) {
        return Ok(tool);
    }
    eprintln!(
        "switchyard: installing {COMPONENTIZE_PY} into {} for the Python controllers",
        venv.display()
    );
    let made = Command::new("python3")
        .args(["-m", "venv"])
        .arg(&venv)
        .status();
    if !made.is_ok_and(|status| status.success()) {
        bail!(
            "cannot make a Python virtual environment: install Python 3 with venv \
             (Debian: apt-get install python3-venv)"
        );
    }
    let installed = Command::new(venv.join("bin/pip"))
        .args([
            "install",
            "--quiet",
            "--disable-pip-version-check",
            COMPONENTIZE_PY,
        ])
        .status();
    if !installed.is_ok_and(|status| status.success()) {
        bail!(
            "cannot install {COMPONENTIZE_PY} from PyPI into {}: check the network, \
             or install it yourself and set SWITCHYARD_COMPONENTIZE_PY to its path",
            venv.display()
        );
    }
    std::fs::write(&stamp, COMPONENTIZE_PY)?;
    Ok(tool)
}

/// What a build of `project` depends on: its Python sources and manifest,
/// the SDK and the tool's version.
fn fingerprint(project: &Path) -> anyhow::Result<String> {
    let mut files = Vec::new();
    let mut folders = vec![project.to_owned()];
    while let Some(folder) = folders.pop() {
        for entry in std::fs::read_dir(&folder)?.filter_map(Result::ok) {
            let path = entry.path();
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with('.') || name == "__pycache__" {
                continue;
            }
            if path.is_dir() {
                folders.push(path);
            } else if name.ends_with(".py") || name == "pyproject.toml" {
                files.push(path);
            }
        }
    }
    files.sort();
    let mut hash = Sha256::new();
    hash.update(COMPONENTIZE_PY);
    for (path, text) in SDK {
        hash.update(path);
        hash.update(text);
    }
    for file in files {
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

/// Builds `project` with `tool` and the SDK in `sdk` into `out`, through a
/// temporary file and a rename so that a watcher never sees half a module.
pub fn build_project(project: &Project, tool: &Path, sdk: &Path, out: &Path) -> anyhow::Result<()> {
    let tmp = out.with_file_name(format!(
        ".{}.tmp",
        out.file_name().unwrap_or_default().to_string_lossy()
    ));
    let output = Command::new(tool)
        .arg("-d")
        .arg(sdk.join("wit"))
        .args(["-w", "controller", "componentize", "-p"])
        .arg(&project.dir)
        .arg("-p")
        .arg(sdk)
        .arg("switchyard_entry")
        .arg("-o")
        .arg(&tmp)
        .output()
        .with_context(|| format!("cannot run {}", tool.display()))?;
    if !output.status.success() {
        let _ = std::fs::remove_file(&tmp);
        bail!(
            "building the Python controller {} failed:\n{}{}",
            project.dir.display(),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr).trim_end()
        );
    }
    std::fs::rename(&tmp, out)
        .with_context(|| format!("cannot move {} to {}", tmp.display(), out.display()))
}

/// Builds every Python controller under `dir` whose sources changed since
/// its last build and returns the modules placed. Without a usable
/// componentize-py, says so in one line and builds none.
pub fn build_projects(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let projects = projects(dir)?;
    if projects.is_empty() {
        return Ok(Vec::new());
    }
    let root = tools_dir(dir);
    std::fs::create_dir_all(&root).with_context(|| format!("cannot make {}", root.display()))?;
    let tool = match componentize_py(&root) {
        Ok(tool) => tool,
        Err(err) => {
            let names: Vec<_> = projects.iter().map(|p| p.name.as_str()).collect();
            eprintln!(
                "switchyard: skipping the Python controllers ({}): {err:#}",
                names.join(", ")
            );
            return Ok(Vec::new());
        }
    };
    let sdk = write_sdk(&root)?;
    let mut placed = Vec::new();
    for project in &projects {
        let out = dir.join(format!("{}.wasm", project.name));
        let stamp = root.join("built").join(&project.name);
        let fingerprint = fingerprint(&project.dir)?;
        let current =
            out.is_file() && std::fs::read_to_string(&stamp).is_ok_and(|old| old == fingerprint);
        if !current {
            eprintln!(
                "switchyard: building the Python controller {}",
                project.name
            );
            build_project(project, &tool, &sdk, &out)?;
            std::fs::create_dir_all(stamp.parent().expect("in a folder"))?;
            std::fs::write(&stamp, &fingerprint)?;
        }
        placed.push(out);
    }
    Ok(placed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn projects_are_folders_with_a_pyproject_and_an_app() {
        let dir = tempfile::tempdir().unwrap();
        let make = |folder: &str, manifest: &str, app: bool| {
            let folder = dir.path().join(folder);
            std::fs::create_dir_all(&folder).unwrap();
            std::fs::write(folder.join("pyproject.toml"), manifest).unwrap();
            if app {
                std::fs::write(folder.join("app.py"), "").unwrap();
            }
        };
        make("b", "[project]\nname = \"py-b\"\n", true);
        make("a", "[project]\nname = \"a\"\nversion = \"1\"\n", true);
        std::fs::create_dir_all(dir.path().join("rust/src")).unwrap();
        let found = projects(dir.path()).unwrap();
        let names: Vec<_> = found.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["a", "py-b"]);

        make("c", "[project]\nname = \"c d\"\n", true);
        let err = projects(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("c d") && err.contains("pyproject.toml"),
            "{err}"
        );
        make("c", "[tool.x]\n", true);
        let err = projects(dir.path()).unwrap_err().to_string();
        assert!(err.contains("no [project] name"), "{err}");
        std::fs::remove_file(dir.path().join("c/app.py")).unwrap();
        make("c", "[project]\nname = \"c\"\n", false);
        let err = projects(dir.path()).unwrap_err().to_string();
        assert!(err.contains("app.py"), "{err}");
    }

    #[test]
    fn the_fingerprint_follows_the_sources_only() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("app.py"), "x = 1\n").unwrap();
        std::fs::write(dir.path().join("pyproject.toml"), "[project]\nname='a'\n").unwrap();
        let first = fingerprint(dir.path()).unwrap();
        std::fs::create_dir_all(dir.path().join("__pycache__")).unwrap();
        std::fs::write(dir.path().join("__pycache__/app.pyc"), "junk").unwrap();
        std::fs::write(dir.path().join("README.md"), "notes").unwrap();
        assert_eq!(fingerprint(dir.path()).unwrap(), first);
        std::fs::write(dir.path().join("app.py"), "x = 2\n").unwrap();
        assert_ne!(fingerprint(dir.path()).unwrap(), first);
    }
}
