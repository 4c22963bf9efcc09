//! `switchyard new`: a controller crate from a template, added to the
//! controllers workspace, that builds and serves at once.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};

/// Creates the controller crate `name` serving `route` in `controllers`
/// (the folder holding the controllers' workspace `Cargo.toml`), adds it to
/// the workspace's members and returns the crate's folder.
pub fn new_controller(controllers: &Path, name: &str, route: &str) -> anyhow::Result<PathBuf> {
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
    std::fs::write(dir.join("src/lib.rs"), template(name, route))?;
    std::fs::write(&manifest, workspace.to_string())
        .with_context(|| format!("cannot write {}", manifest.display()))?;
    Ok(dir)
}

/// The new controller's source: it greets, echoes, and says how to try it.
fn template(name: &str, route: &str) -> String {
    let ty: String = name
        .split(['-', '_'])
        .filter(|part| !part.is_empty())
        .map(|part| {
            let mut chars = part.chars();
            chars.next().map_or_else(String::new, |first| {
                first.to_ascii_uppercase().to_string() + chars.as_str()
            })
        })
        .collect();
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
        let made = new_controller(dir.path(), "room-service", "/rooms/{room}").unwrap();
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
            let err = new_controller(dir.path(), name, route).unwrap_err();
            assert!(err.to_string().contains(error), "{name}: {err}");
        }
        std::fs::create_dir(dir.path().join("taken")).unwrap();
        let err = new_controller(dir.path(), "taken", "/taken").unwrap_err();
        assert!(err.to_string().contains("already exists"), "{err}");
        let err = new_controller(&dir.path().join("nowhere"), "x", "/x").unwrap_err();
        assert!(err.to_string().contains("cannot read"), "{err}");
    }
}
