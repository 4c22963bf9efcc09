//! Python controllers: a folder with a `pyproject.toml` (its
//! `[project] name` names the module) and an `app.py` that declares its
//! class with `@switchyard.route`, built with componentize-py.
//!
//! componentize-py comes from `SWITCHYARD_COMPONENTIZE_PY` when set (the
//! tests' virtual environment), else from a virtual environment made on
//! first use in `.switchyard/python/venv` (`python3 -m venv`, then pip).
//! The SDK (`guest-sdk/python`: the `switchyard` package, the entry module
//! componentize-py builds, and the WIT world) is written to
//! `.switchyard/python/sdk` and put on the build's Python path.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, bail};

use super::{Kind, Project};

/// The componentize-py release the SDK is written and tested against.
pub const COMPONENTIZE_PY: &str = "componentize-py==0.25.1";

/// The SDK's files, by their path under the SDK folder.
const SDK: [(&str, &str); 4] = [
    (
        "switchyard/__init__.py",
        include_str!("../../../guest-sdk/python/switchyard/__init__.py"),
    ),
    (
        "switchyard/_world.py",
        include_str!("../../../guest-sdk/python/switchyard/_world.py"),
    ),
    (
        "switchyard_entry.py",
        include_str!("../../../guest-sdk/python/switchyard_entry.py"),
    ),
    (
        "wit/switchyard.wit",
        include_str!("../../../wit/switchyard.wit"),
    ),
];

const KIND: Kind = Kind {
    manifest: "pyproject.toml",
    entry: "app.py",
    name: |text| {
        let table: toml::Table = toml::from_str(text).ok()?;
        Some(table.get("project")?.get("name")?.as_str()?.to_owned())
    },
};

/// The Python controllers under `dir`.
pub fn projects(dir: &Path) -> anyhow::Result<Vec<Project>> {
    super::projects(dir, &KIND)
}

/// componentize-py: the one `SWITCHYARD_COMPONENTIZE_PY` names, or the one
/// in the virtual environment under `root`, made and filled on first use.
fn componentize_py(root: &Path) -> anyhow::Result<PathBuf> {
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

/// Builds `project` with `tool` and the SDK in `sdk` into `out`.
fn build(project: &Project, tool: &Path, sdk: &Path, out: &Path) -> anyhow::Result<()> {
    let output = Command::new(tool)
        .arg("-d")
        .arg(sdk.join("wit"))
        .args(["-w", "controller", "componentize", "-p"])
        .arg(&project.dir)
        .arg("-p")
        .arg(sdk)
        .arg("switchyard_entry")
        .arg("-o")
        .arg(out)
        .output()
        .with_context(|| format!("cannot run {}", tool.display()))?;
    if !output.status.success() {
        bail!(
            "building the Python controller {} failed:\n{}{}",
            project.dir.display(),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr).trim_end()
        );
    }
    Ok(())
}

/// Builds every Python controller under `dir` whose sources changed since
/// its last build and returns the modules. Without a usable
/// componentize-py, says so in one line and builds none.
pub fn build_projects(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let projects = projects(dir)?;
    if projects.is_empty() {
        return Ok(Vec::new());
    }
    let root = super::tools_dir(dir, "python");
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
    let sdk = root.join("sdk");
    super::write_files(&sdk, &SDK)?;
    super::build_changed(
        dir,
        &root,
        &projects,
        |project| {
            super::fingerprint(
                &project.dir,
                &[".py", "pyproject.toml"],
                &SDK,
                COMPONENTIZE_PY,
            )
        },
        |project, out| build(project, &tool, &sdk, out),
    )
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
        assert!(err.contains("names no project"), "{err}");
        std::fs::remove_file(dir.path().join("c/app.py")).unwrap();
        make("c", "[project]\nname = \"c\"\n", false);
        let err = projects(dir.path()).unwrap_err().to_string();
        assert!(err.contains("app.py"), "{err}");
    }

    #[test]
    fn the_fingerprint_follows_the_sources_only() {
        let dir = tempfile::tempdir().unwrap();
        let print = || {
            super::super::fingerprint(
                dir.path(),
                &[".py", "pyproject.toml"],
                &SDK,
                COMPONENTIZE_PY,
            )
            .unwrap()
        };
        std::fs::write(dir.path().join("app.py"), "x = 1\n").unwrap();
        std::fs::write(dir.path().join("pyproject.toml"), "[project]\nname='a'\n").unwrap();
        let first = print();
        std::fs::create_dir_all(dir.path().join("__pycache__")).unwrap();
        std::fs::write(dir.path().join("__pycache__/app.py"), "junk").unwrap();
        std::fs::write(dir.path().join("README.md"), "notes").unwrap();
        assert_eq!(print(), first);
        std::fs::write(dir.path().join("app.py"), "x = 2\n").unwrap();
        assert_ne!(print(), first);
    }
}
