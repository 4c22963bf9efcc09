//! JavaScript controllers: a folder with a `package.json` (its `name`
//! names the module) and an `app.js` whose default export is
//! `controller({...})`, built with ComponentizeJS.
//!
//! ComponentizeJS comes from the `node_modules` of `SWITCHYARD_JS_TOOLS`
//! when set (the tests' folder), else of `.switchyard/js`; `npm ci`
//! installs it there on first use, pinned by `guest-sdk/js/tools`'s lock
//! file. A build stages the project in
//! `.switchyard/js/stage/<name>/`: the SDK (`guest-sdk/js`: `switchyard.js`
//! and the entry module that exports the world) beside a copy of the
//! project's scripts under `app/`, in which `import … from "switchyard"`
//! is pointed at the staged SDK (ComponentizeJS follows relative imports
//! only), then runs the SDK's `build.mjs` with node.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, bail};

use super::{Kind, Project};

/// The ComponentizeJS release the SDK is written and tested against.
pub const COMPONENTIZE_JS: &str = "@bytecodealliance/componentize-js@0.23.0";

/// What npm installs for the build (`npm ci`): ComponentizeJS and what it
/// needs, pinned by the lock file.
const TOOLS: [(&str, &str); 2] = [
    (
        "package.json",
        include_str!("../../../guest-sdk/js/tools/package.json"),
    ),
    (
        "package-lock.json",
        include_str!("../../../guest-sdk/js/tools/package-lock.json"),
    ),
];

/// A copy of the lock file an installation was made from.
const INSTALLED: &str = ".installed-lock";

/// The SDK's files, by their path in a staged build.
const SDK: [(&str, &str); 3] = [
    (
        "switchyard.js",
        include_str!("../../../guest-sdk/js/switchyard.js"),
    ),
    ("entry.js", include_str!("../../../guest-sdk/js/entry.js")),
    (
        "wit/switchyard.wit",
        include_str!("../../../wit/switchyard.wit"),
    ),
];

/// The script that runs ComponentizeJS, next to its `node_modules`.
const BUILD_SCRIPT: &str = include_str!("../../../guest-sdk/js/build.mjs");

const KIND: Kind = Kind {
    manifest: "package.json",
    entry: "app.js",
    name: |text| {
        let manifest: serde_json::Value = serde_json::from_str(text).ok()?;
        Some(manifest.get("name")?.as_str()?.to_owned())
    },
};

/// The files of a project that are staged for a build.
const SOURCES: [&str; 3] = [".js", ".mjs", ".json"];

/// The JavaScript controllers under `dir`.
pub fn projects(dir: &Path) -> anyhow::Result<Vec<Project>> {
    super::projects(dir, &KIND)
}

/// The folder whose `node_modules` holds ComponentizeJS: the one
/// `SWITCHYARD_JS_TOOLS` names, or `root`; npm installs the pinned tools
/// there (`npm ci`) on first use and whenever the lock file changes.
fn tools(root: &Path) -> anyhow::Result<PathBuf> {
    let node = Command::new("node").arg("--version").output();
    if !node.is_ok_and(|out| out.status.success()) {
        bail!("node was not found: install Node.js 20 or later with npm");
    }
    let folder = match std::env::var_os("SWITCHYARD_JS_TOOLS") {
        Some(folder) => PathBuf::from(folder),
        None => root.to_owned(),
    };
    let lock = TOOLS[1].1;
    let current = std::fs::read_to_string(folder.join(INSTALLED)).is_ok_and(|old| old == lock);
    if !current {
        eprintln!(
            "switchyard: installing {COMPONENTIZE_JS} into {} for the JavaScript controllers",
            folder.display()
        );
        super::write_files(&folder, &TOOLS)?;
        let npm = Command::new("npm")
            .args(["ci", "--silent", "--no-audit", "--no-fund", "--prefix"])
            .arg(&folder)
            .status();
        if !npm.is_ok_and(|status| status.success()) {
            bail!(
                "cannot install {COMPONENTIZE_JS} with npm into {}: check npm and the network",
                folder.display()
            );
        }
        std::fs::write(folder.join(INSTALLED), lock)?;
    }
    super::write_files(&folder, &[("build.mjs", BUILD_SCRIPT)])?;
    Ok(folder)
}

/// `text` (a script at `depth` folders below the staged `app/`) with its
/// imports of `switchyard` pointed at the staged SDK.
fn point_at_sdk(text: &str, depth: usize) -> String {
    let sdk = format!("{}switchyard.js", "../".repeat(depth + 1));
    text.replace("from \"switchyard\"", &format!("from \"{sdk}\""))
        .replace("from 'switchyard'", &format!("from '{sdk}'"))
}

/// Stages `project` in `stage` and builds it with the tools in `tools`
/// into `out`.
fn build(project: &Project, tools: &Path, stage: &Path, out: &Path) -> anyhow::Result<()> {
    let _ = std::fs::remove_dir_all(stage);
    super::write_files(stage, &SDK)?;
    for file in super::sources(&project.dir, &SOURCES)? {
        let relative = file.strip_prefix(&project.dir).expect("found under it");
        let dest = stage.join("app").join(relative);
        std::fs::create_dir_all(dest.parent().expect("in a folder"))?;
        let text = std::fs::read_to_string(&file)
            .with_context(|| format!("cannot read {}", file.display()))?;
        let depth = relative.components().count() - 1;
        std::fs::write(&dest, point_at_sdk(&text, depth))?;
    }
    let out = std::path::absolute(out)?;
    // ComponentizeJS 0.23 maps the sources relative to the working
    // directory: run it from the staged folder.
    let output = Command::new("node")
        .arg(tools.join("build.mjs"))
        .arg(stage.join("entry.js"))
        .arg(stage.join("wit"))
        .arg(&out)
        .current_dir(stage)
        .output()
        .context("cannot run node")?;
    if !output.status.success() {
        bail!(
            "building the JavaScript controller {} failed:\n{}{}",
            project.dir.display(),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr).trim_end()
        );
    }
    Ok(())
}

/// Builds every JavaScript controller under `dir` whose sources changed
/// since its last build and returns the modules. Without node or
/// ComponentizeJS, says so in one line and builds none.
pub fn build_projects(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let projects = projects(dir)?;
    if projects.is_empty() {
        return Ok(Vec::new());
    }
    let root = super::tools_dir(dir, "js");
    std::fs::create_dir_all(&root).with_context(|| format!("cannot make {}", root.display()))?;
    let tools = match tools(&root) {
        Ok(tools) => tools,
        Err(err) => {
            let names: Vec<_> = projects.iter().map(|p| p.name.as_str()).collect();
            eprintln!(
                "switchyard: skipping the JavaScript controllers ({}): {err:#}",
                names.join(", ")
            );
            return Ok(Vec::new());
        }
    };
    let mut sdk = SDK.to_vec();
    sdk.push(("build.mjs", BUILD_SCRIPT));
    super::build_changed(
        dir,
        &root,
        &projects,
        |project| super::fingerprint(&project.dir, &SOURCES, &sdk, COMPONENTIZE_JS),
        |project, out| {
            build(
                project,
                &tools,
                &root.join("stage").join(&project.name),
                out,
            )
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn projects_are_named_by_their_package() {
        let dir = tempfile::tempdir().unwrap();
        let folder = dir.path().join("jsrooms");
        std::fs::create_dir_all(&folder).unwrap();
        std::fs::write(folder.join("package.json"), r#"{"name": "jsrooms"}"#).unwrap();
        std::fs::write(folder.join("app.js"), "").unwrap();
        let found = projects(dir.path()).unwrap();
        assert_eq!(found[0].name, "jsrooms");
        std::fs::write(folder.join("package.json"), r#"{"name": "@scope/x"}"#).unwrap();
        let err = projects(dir.path()).unwrap_err().to_string();
        assert!(err.contains("@scope/x"), "{err}");
    }

    #[test]
    fn imports_of_the_sdk_point_at_the_staged_copy() {
        let text = "import { controller } from \"switchyard\";\nimport x from './x.js';\n";
        assert_eq!(
            point_at_sdk(text, 0),
            "import { controller } from \"../switchyard.js\";\nimport x from './x.js';\n"
        );
        assert_eq!(
            point_at_sdk("import * as s from 'switchyard';", 1),
            "import * as s from '../../switchyard.js';"
        );
    }
}
