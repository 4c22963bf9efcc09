//! `switchyard new`: a controller from a template that builds and serves
//! at once: a Rust crate added to the controllers' workspace, or a Python
//! or JavaScript project (see [`crate::languages`]) beside it.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};

/// The language a new controller is written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Lang {
    /// A crate on the Rust SDK, in the controllers' Cargo workspace.
    #[default]
    Rust,
    /// `pyproject.toml` and `app.py`, on the Python SDK (componentize-py).
    Python,
    /// `package.json` and `app.js`, on the JavaScript SDK (ComponentizeJS).
    #[value(alias = "javascript")]
    Js,
}

/// Creates the controller `name` serving `route` in `controllers`, in
/// `lang`, and returns its folder. A Rust crate joins the workspace's
/// members in `controllers/Cargo.toml`; a Python or JavaScript project
/// needs nothing else, `switchyard build` finds it by its manifest.
pub fn new_controller(
    controllers: &Path,
    name: &str,
    route: &str,
    lang: Lang,
) -> anyhow::Result<PathBuf> {
    let valid_name = name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if !valid_name {
        bail!(
            "`{name}` cannot name a controller: use lowercase letters, digits, `-` and `_`, \
             starting with a letter (it names the crate, the route and `{name}.wasm`)"
        );
    }
    switchyard_grammar::route_segments(route)
        .map_err(|reason| anyhow::anyhow!("invalid route `{route}`: {reason}"))?;
    match lang {
        Lang::Rust => new_crate(controllers, name, route),
        Lang::Python => new_project(
            controllers,
            name,
            [
                ("pyproject.toml", python_manifest(name)),
                ("app.py", python_template(name, route)),
            ],
        ),
        Lang::Js => new_project(
            controllers,
            name,
            [
                ("package.json", js_manifest(name)),
                ("app.js", js_template(name, route)),
            ],
        ),
    }
}

/// The Rust crate: its folder, and its name in the workspace's members.
fn new_crate(controllers: &Path, name: &str, route: &str) -> anyhow::Result<PathBuf> {
    let manifest = controllers.join("Cargo.toml");
    let text = std::fs::read_to_string(&manifest).with_context(|| {
        format!(
            "cannot read {}: `new` adds the controller to the controllers' workspace there",
            manifest.display()
        )
    })?;
    let mut workspace: toml_edit::DocumentMut = text
        .parse()
        .with_context(|| format!("{} is not valid TOML", manifest.display()))?;
    let members = workspace
        .get_mut("workspace")
        .and_then(|workspace| workspace.get_mut("members"))
        .and_then(|members| members.as_array_mut())
        .with_context(|| format!("{} has no `[workspace] members` list", manifest.display()))?;
    if members.iter().any(|member| member.as_str() == Some(name)) {
        bail!("{} already lists `{name}`", manifest.display());
    }
    let dir = controllers.join(name);
    if dir.exists() {
        bail!("{} already exists", dir.display());
    }
    members.push(name);
    members.sort_by(|a, b| a.as_str().cmp(&b.as_str()));

    std::fs::create_dir_all(dir.join("src"))
        .with_context(|| format!("cannot create {}", dir.display()))?;
    std::fs::write(
        dir.join("Cargo.toml"),
        format!(
            "[package]\nname = \"{name}\"\nedition.workspace = true\nversion.workspace = true\n\
             license.workspace = true\n\n[lib]\ncrate-type = [\"cdylib\"]\n\n[dependencies]\n\
             switchyard-sdk.workspace = true\n"
        ),
    )?;
    std::fs::write(dir.join("src/lib.rs"), rust_template(name, route))?;
    std::fs::write(&manifest, workspace.to_string())
        .with_context(|| format!("cannot write {}", manifest.display()))?;
    Ok(dir)
}

/// A Python or JavaScript project: a new folder `controllers/name` holding
/// `files`. The controllers folder must exist (it is where `build` looks).
fn new_project<const N: usize>(
    controllers: &Path,
    name: &str,
    files: [(&str, String); N],
) -> anyhow::Result<PathBuf> {
    if !controllers.is_dir() {
        bail!(
            "the controllers folder {} does not exist: `new` puts the controller there",
            controllers.display()
        );
    }
    let dir = controllers.join(name);
    if dir.exists() {
        bail!("{} already exists", dir.display());
    }
    let module = controllers.join(format!("{name}.wasm"));
    if module.exists() {
        bail!(
            "{} already exists: another controller builds to that module",
            module.display()
        );
    }
    std::fs::create_dir(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    for (file, text) in files {
        let path = dir.join(file);
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(dir)
}

/// `room-service` → `RoomService`: the controller's type or class name.
fn type_name(name: &str) -> String {
    name.split(['-', '_'])
        .filter(|part| !part.is_empty())
        .map(|part| {
            let mut chars = part.chars();
            chars.next().map_or_else(String::new, |first| {
                first.to_ascii_uppercase().to_string() + chars.as_str()
            })
        })
        .collect()
}

/// The new Rust controller: it greets, echoes, and says how to try it.
fn rust_template(name: &str, route: &str) -> String {
    let ty = type_name(name);
    format!(
        r#"//! {name}: greets each client, then sends every message back.
//!
//! Try it: `switchyard up` at the repository root, then connect a
//! WebSocket client to `ws://127.0.0.1:8080{route}` and type.

use switchyard_sdk::{{Connection, Controller, Message, socket_route}};

#[socket_route(route = "{route}", name = "{name}")]
#[derive(Default)]
struct {ty} {{
    /// Messages this instance has answered (kept across events, not
    /// across reloads: use `switchyard_sdk::state` for that).
    answered: u64,
}}

impl Controller for {ty} {{
    fn on_open(&mut self, _conn: &Connection) -> Option<Message> {{
        Some(Message::text("Hello from {name}!"))
    }}

    fn on_message(&mut self, _conn: &Connection, msg: Message) -> Option<Message> {{
        self.answered += 1;
        Some(msg)
    }}
}}
"#
    )
}

fn python_manifest(name: &str) -> String {
    format!(
        "# A Python controller: `switchyard build` (or `up`) builds app.py with\n\
         # componentize-py into {name}.wasm beside this folder.\n\
         [project]\nname = \"{name}\"\nversion = \"0.1.0\"\nrequires-python = \">=3.11\"\n"
    )
}

/// The new Python controller: the Rust template's behaviour, in Python.
fn python_template(name: &str, route: &str) -> String {
    let class = type_name(name);
    format!(
        r#""""{name}: greets each client, then sends every message back.

Try it: `switchyard up` at the repository root (it installs componentize-py
on first use and builds this), then connect a WebSocket client to
ws://127.0.0.1:8080{route} and type. `up` rebuilds it when you save.
"""

import switchyard
from switchyard import Connection, Message


@switchyard.route("{route}", name="{name}")
class {class}(switchyard.Controller):
    def __init__(self) -> None:
        # Messages this instance has answered (kept across events, not
        # across reloads: use switchyard.state for that).
        self.answered = 0

    def on_open(self, conn: Connection):
        return "Hello from {name}!"

    def on_message(self, conn: Connection, msg: Message):
        self.answered += 1
        return msg
"#
    )
}

fn js_manifest(name: &str) -> String {
    format!(
        "{{\n  \"name\": \"{name}\",\n  \"version\": \"0.1.0\",\n  \"description\": \"A JavaScript \
         controller: `switchyard build` (or `up`) builds app.js with ComponentizeJS into \
         {name}.wasm beside this folder\",\n  \"private\": true,\n  \"type\": \"module\"\n}}\n"
    )
}

/// The new JavaScript controller: the Rust template's behaviour, in
/// JavaScript.
fn js_template(name: &str, route: &str) -> String {
    format!(
        r#"// {name}: greets each client, then sends every message back.
//
// Try it: `switchyard up` at the repository root (it installs ComponentizeJS
// with npm on first use and builds this), then connect a WebSocket client to
// ws://127.0.0.1:8080{route} and type. `up` rebuilds it when you save.

import {{ controller }} from "switchyard";

// Messages this instance has answered (kept across events, not across
// reloads: use `state` from "switchyard" for that).
let answered = 0;

export default controller({{
  route: "{route}",
  name: "{name}",

  onOpen(conn) {{
    return "Hello from {name}!";
  }},

  onMessage(conn, msg) {{
    answered += 1;
    return msg;
  }},
}});
"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn workspace() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("Cargo.toml"),
            "# The samples.\n[workspace]\nresolver = \"2\"\nmembers = [\"chat\", \"echo\"]\n",
        )
        .unwrap();
        dir
    }

    #[test]
    fn a_new_controller_joins_the_workspace_in_order() {
        let dir = workspace();
        let made = new_controller(dir.path(), "room-service", "/rooms/{room}", Lang::Rust).unwrap();
        let manifest = std::fs::read_to_string(dir.path().join("Cargo.toml")).unwrap();
        assert!(manifest.starts_with("# The samples.\n"), "{manifest}");
        assert!(
            manifest.contains(r#"members = ["chat", "echo", "room-service"]"#),
            "{manifest}"
        );
        let source = std::fs::read_to_string(made.join("src/lib.rs")).unwrap();
        assert!(source.contains("struct RoomService"), "{source}");
        assert!(
            source.contains(r#"#[socket_route(route = "/rooms/{room}", name = "room-service")]"#),
            "{source}"
        );
    }

    #[test]
    fn bad_names_routes_and_duplicates_are_refused() {
        let dir = workspace();
        for (name, route, error) in [
            ("Chat", "/x", "lowercase"),
            ("9lives", "/x", "starting with a letter"),
            ("fine", "nope", "starts with `/`"),
            ("echo", "/echo2", "already lists `echo`"),
        ] {
            let err = new_controller(dir.path(), name, route, Lang::Rust).unwrap_err();
            assert!(err.to_string().contains(error), "{name}: {err}");
        }
        std::fs::create_dir(dir.path().join("taken")).unwrap();
        let err = new_controller(dir.path(), "taken", "/taken", Lang::Rust).unwrap_err();
        assert!(err.to_string().contains("already exists"), "{err}");
        let err = new_controller(&dir.path().join("nowhere"), "x", "/x", Lang::Rust).unwrap_err();
        assert!(err.to_string().contains("cannot read"), "{err}");
    }

    #[test]
    fn python_and_javascript_projects_are_found_by_the_build() {
        let dir = workspace();
        let py = new_controller(dir.path(), "py-room", "/py/{room}", Lang::Python).unwrap();
        let js = new_controller(dir.path(), "js-room", "/js/{room}", Lang::Js).unwrap();
        let source = std::fs::read_to_string(py.join("app.py")).unwrap();
        assert!(
            source.contains(r#"@switchyard.route("/py/{room}", name="py-room")"#)
                && source.contains("class PyRoom(switchyard.Controller):"),
            "{source}"
        );
        let source = std::fs::read_to_string(js.join("app.js")).unwrap();
        assert!(
            source.contains(r#"route: "/js/{room}","#) && source.contains(r#"name: "js-room","#),
            "{source}"
        );
        let manifest = std::fs::read_to_string(js.join("package.json")).unwrap();
        let manifest: serde_json::Value = serde_json::from_str(&manifest).unwrap();
        assert_eq!(manifest["name"], "js-room");
        let found = |projects: Vec<crate::languages::Project>| -> Vec<String> {
            projects.into_iter().map(|project| project.name).collect()
        };
        assert_eq!(
            found(crate::languages::python::projects(dir.path()).unwrap()),
            ["py-room"]
        );
        assert_eq!(
            found(crate::languages::javascript::projects(dir.path()).unwrap()),
            ["js-room"]
        );
        // The Rust workspace is left alone.
        let workspace = std::fs::read_to_string(dir.path().join("Cargo.toml")).unwrap();
        assert!(
            workspace.contains(r#"members = ["chat", "echo"]"#),
            "{workspace}"
        );

        let err = new_controller(dir.path(), "py-room", "/again", Lang::Js).unwrap_err();
        assert!(err.to_string().contains("already exists"), "{err}");
        std::fs::write(dir.path().join("taken.wasm"), b"").unwrap();
        let err = new_controller(dir.path(), "taken", "/taken", Lang::Python).unwrap_err();
        assert!(
            err.to_string().contains("another controller builds"),
            "{err}"
        );
        let err = new_controller(&dir.path().join("nowhere"), "x", "/x", Lang::Js).unwrap_err();
        assert!(err.to_string().contains("does not exist"), "{err}");
    }
}
