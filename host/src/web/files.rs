//! Static files from the `public` folder (`public` in the config).
//!
//! A plain `GET` or `HEAD` that matches no route is answered from the
//! folder: the file's bytes with its content type, an `ETag` and a
//! `Last-Modified` (and 304 to a request that has them already),
//! `index.html` for a folder, 404 for anything else. No request reaches
//! outside the folder: the path is percent-decoded one segment at a time,
//! and a segment that is `..`, starts with a dot (hidden files, `.git`),
//! or holds a slash, a backslash or a NUL is refused; what is left is
//! resolved with every link followed and must still be inside the
//! folder, so a symlink cannot lead out either.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use percent_encoding::percent_decode_str;

use super::Response;
use crate::wire::handshake::Request;

/// The folder files are served from.
#[derive(Debug)]
pub struct Public {
    /// The folder, absolute with links resolved: what every served file's
    /// resolved path must start with.
    root: PathBuf,
}

/// Why a path has no file.
#[derive(Debug, PartialEq, Eq)]
enum Refused {
    /// Not a path this folder could hold (404, with nothing said of why).
    NotFound,
    /// A folder asked for without its trailing slash: relative links in its
    /// `index.html` need the slash.
    Folder,
}

impl Public {
    /// Serves `dir`, which must exist.
    pub fn new(dir: &Path) -> std::io::Result<Public> {
        let root = std::fs::canonicalize(dir)?;
        if !root.is_dir() {
            return Err(std::io::Error::other(format!(
                "{} is not a folder",
                root.display()
            )));
        }
        Ok(Public { root })
    }

    /// The answer to `request`.
    pub async fn answer(&self, request: &Request) -> Response {
        if request.method != "GET" && request.method != "HEAD" {
            return Response::text(405, format!("{} serves files: use GET", request.path))
                .with_header("Allow", "GET, HEAD");
        }
        let file = match self.resolve(&request.path).await {
            Ok(file) => file,
            Err(Refused::Folder) => {
                let mut location = format!("{}/", request.path);
                if !request.query.is_empty() {
                    location = format!("{location}?{}", request.query);
                }
                return Response::empty(301).with_header("Location", location);
            }
            Err(Refused::NotFound) => {
                return Response::text(404, format!("no route or file for {}", request.path));
            }
        };
        match serve(&file, request).await {
            Ok(response) => response,
            Err(_) => Response::text(404, format!("no route or file for {}", request.path)),
        }
    }

    /// The file that `url_path` names, inside the folder.
    async fn resolve(&self, url_path: &str) -> Result<PathBuf, Refused> {
        let relative = relative_path(url_path).ok_or(Refused::NotFound)?;
        let path = self.inside(&self.root.join(&relative)).await?;
        let meta = tokio::fs::metadata(&path)
            .await
            .map_err(|_| Refused::NotFound)?;
        if meta.is_file() {
            return Ok(path);
        }
        if !meta.is_dir() {
            return Err(Refused::NotFound);
        }
        if !url_path.ends_with('/') {
            return Err(Refused::Folder);
        }
        let index = self.inside(&path.join("index.html")).await?;
        match tokio::fs::metadata(&index).await {
            Ok(meta) if meta.is_file() => Ok(index),
            _ => Err(Refused::NotFound),
        }
    }

    /// `path` with every link resolved, if that is inside the folder.
    async fn inside(&self, path: &Path) -> Result<PathBuf, Refused> {
        let resolved = tokio::fs::canonicalize(path)
            .await
            .map_err(|_| Refused::NotFound)?;
        if resolved.starts_with(&self.root) {
            Ok(resolved)
        } else {
            Err(Refused::NotFound)
        }
    }
}

/// The path below the folder that `url_path` names, or `None` if it
/// names nothing the folder may serve.
fn relative_path(url_path: &str) -> Option<PathBuf> {
    let rest = url_path.strip_prefix('/')?;
    let mut relative = PathBuf::new();
    for segment in rest.split('/') {
        if segment.is_empty() {
            continue;
        }
        let decoded = percent_decode_str(segment).decode_utf8().ok()?;
        let refused = decoded.starts_with('.')
            || decoded.contains(['/', '\\', '\0'])
            || decoded.chars().any(char::is_control);
        if refused {
            return None;
        }
        relative.push(&*decoded);
    }
    Some(relative)
}

/// The answer for `file`: its bytes, or 304 when the request's validators
/// match.
async fn serve(file: &Path, request: &Request) -> std::io::Result<Response> {
    let opened = tokio::fs::File::open(file).await?;
    let meta = opened.metadata().await?;
    let modified = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
    let since_epoch = modified
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let etag = format!("\"{:x}-{:x}\"", meta.len(), since_epoch.as_nanos());
    let last_modified = httpdate::fmt_http_date(modified);
    let response = if unchanged(request, &etag, modified) {
        Response::empty(304)
    } else {
        Response::file(content_type(file), opened, meta.len())
    };
    Ok(response
        .with_header("ETag", etag)
        .with_header("Last-Modified", last_modified)
        // Always asked again, cheaply (304): an edited page shows at once.
        .with_header("Cache-Control", "no-cache")
        .with_header("X-Content-Type-Options", "nosniff"))
}

/// Whether the client's copy is current (RFC 9110 §13.1): `If-None-Match`
/// decides when present, else `If-Modified-Since`.
fn unchanged(request: &Request, etag: &str, modified: SystemTime) -> bool {
    if let Some(tags) = request.header("If-None-Match") {
        return tags
            .split(',')
            .map(str::trim)
            .any(|tag| tag == "*" || tag.strip_prefix("W/").unwrap_or(tag) == etag);
    }
    let Some(since) = request
        .header("If-Modified-Since")
        .and_then(|date| httpdate::parse_http_date(date.trim()).ok())
    else {
        return false;
    };
    // HTTP dates have whole seconds.
    let modified_s = modified
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let since_s = since
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    modified_s <= since_s
}

/// The `Content-Type` for `file`, by its extension; text types in UTF-8.
fn content_type(file: &Path) -> String {
    let mime = mime_guess::from_path(file).first_or_octet_stream();
    let textual = mime.type_() == mime_guess::mime::TEXT
        || matches!(mime.subtype().as_str(), "javascript" | "json" | "xml")
        || mime
            .suffix()
            .is_some_and(|suffix| suffix == mime_guess::mime::XML);
    if textual {
        format!("{mime}; charset=utf-8")
    } else {
        mime.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_leave_the_folder_never() {
        assert_eq!(relative_path("/"), Some(PathBuf::new()));
        assert_eq!(relative_path("/a/b.js"), Some(PathBuf::from("a/b.js")));
        assert_eq!(
            relative_path("/a%20b/%C3%A9.txt"),
            Some(PathBuf::from("a b/é.txt"))
        );
        // Doubled slashes are one; a leading one never makes a path absolute.
        assert_eq!(
            relative_path("//etc/passwd"),
            Some(PathBuf::from("etc/passwd"))
        );
        for refused in [
            "/../secret",
            "/a/../../secret",
            "/%2e%2e/secret",
            "/%2E%2E%2Fsecret",
            "/a/%2e%2e%2f%2e%2e%2fsecret",
            "/..%5csecret",
            "/.git/config",
            "/a/.env",
            "/%00",
            "/a%2fb",
            "/%ff",
            "relative",
            "http://example.com/",
        ] {
            assert_eq!(relative_path(refused), None, "{refused}");
        }
    }

    #[test]
    fn content_types_follow_the_extension() {
        assert_eq!(
            content_type(Path::new("index.html")),
            "text/html; charset=utf-8"
        );
        assert!(content_type(Path::new("app.js")).ends_with("javascript; charset=utf-8"));
        assert_eq!(
            content_type(Path::new("style.css")),
            "text/css; charset=utf-8"
        );
        assert_eq!(content_type(Path::new("logo.png")), "image/png");
        assert_eq!(
            content_type(Path::new("logo.svg")),
            "image/svg+xml; charset=utf-8"
        );
        assert_eq!(
            content_type(Path::new("data.bin")),
            "application/octet-stream"
        );
    }
}
