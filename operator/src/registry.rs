//! Resolving a tag to a digest in an OCI registry.
//!
//! [`Resolve`] is what the ImageChannel controller needs; [`OciResolver`] is the real one, built on
//! the `oci-client` crate (`fetch_manifest_digest`: the digest of whatever the tag points at, a
//! manifest or an index, never a platform manifest picked out of an index).
//!
//! Safety rules kept here (CONTRACT.md, "Registry and webhook safety"):
//! - an operator-level allowlist of registry hosts; an image from any other registry is refused
//!   before a single request is sent;
//! - credentials are picked from a `dockerconfigjson` for the image's own registry host only;
//! - credentials go only to the registry's own host and to token realms on that host or on a host
//!   the operator configured. `oci-client` itself would send basic credentials to whatever realm a
//!   registry's `WWW-Authenticate` names, so with credentials the token exchange is done here and
//!   `oci-client` only ever gets the resulting bearer token (or, for a registry that asks for HTTP
//!   basic authentication, the basic credentials, which it sends to the registry host only).

use async_trait::async_trait;
use base64::Engine as _;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

/// Installs aws-lc-rs as the process-wide rustls crypto provider, unless one is installed already.
///
/// kube (aws-lc-rs) and reqwest without a provider of its own share it. Call it at the top of
/// `main`, of the demo and of every test set-up that builds a registry client or a kube client;
/// [`OciResolver::new`] calls it as well, so calling it twice is harmless.
pub fn install_crypto_provider() {
    // Err means a provider is installed already: exactly what we want.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// User name and password for one registry (from a `dockerconfigjson` Secret).
#[derive(Clone, PartialEq, Eq)]
pub struct RegistryCredentials {
    /// User name.
    pub username: String,
    /// Password or token.
    pub password: String,
}

impl fmt::Debug for RegistryCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistryCredentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// Why a tag could not be resolved. Each variant is a stable condition reason ([`Self::reason`]).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    /// Network error, timeout, 5xx, throttling, or an answer that makes no sense.
    #[error("{0}")]
    Unreachable(String),
    /// The repository or the tag does not exist.
    #[error("{0}")]
    TagNotFound(String),
    /// Credentials missing, wrong, or not good enough.
    #[error("{0}")]
    Unauthorized(String),
    /// The registry (or its token realm) is not one the operator may talk to; nothing was sent.
    #[error("{0}")]
    NotAllowed(String),
    /// The image or tag is malformed.
    #[error("{0}")]
    InvalidReference(String),
}

impl RegistryError {
    /// The CamelCase condition reason.
    pub fn reason(&self) -> &'static str {
        match self {
            RegistryError::Unreachable(_) => "RegistryUnreachable",
            RegistryError::TagNotFound(_) => "TagNotFound",
            RegistryError::Unauthorized(_) => "Unauthorized",
            RegistryError::NotAllowed(_) => "RegistryNotAllowed",
            RegistryError::InvalidReference(_) => "InvalidReference",
        }
    }

    /// The message (never carries a credential).
    pub fn message(&self) -> &str {
        match self {
            RegistryError::Unreachable(m)
            | RegistryError::TagNotFound(m)
            | RegistryError::Unauthorized(m)
            | RegistryError::NotAllowed(m)
            | RegistryError::InvalidReference(m) => m,
        }
    }
}

/// Resolves a tag of a repository to the digest it points at.
#[async_trait]
pub trait Resolve: Send + Sync {
    /// `image` is `host[:port]/path`; the answer is `sha256:<64 hex>`.
    async fn resolve(&self, image: &str, tag: &str, auth: Option<RegistryCredentials>)
    -> Result<String, RegistryError>;
}

/// Operator settings for registries.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RegistrySettings {
    /// Registry hosts (`host` or `host:port`) the operator resolves from; empty means all.
    pub allowed: Vec<String>,
    /// Registry hosts reached over plain HTTP (`127.0.0.1:5000` in tests); all others use HTTPS.
    pub insecure: Vec<String>,
    /// Extra hosts (`host` or `host:port`) that may receive credentials as token realms, besides
    /// the registry's own host (e.g. `auth.docker.io` for Docker Hub).
    pub token_realms: Vec<String>,
    /// Time limit of one resolve, token exchange included.
    pub timeout: Duration,
}

impl RegistrySettings {
    /// Settings with the default time limit (30 s).
    pub fn new(allowed: Vec<String>, insecure: Vec<String>, token_realms: Vec<String>) -> Self {
        RegistrySettings { allowed, insecure, token_realms, timeout: Duration::from_secs(30) }
    }

    /// Whether `host` may be resolved from (the allowlist is empty or names it).
    pub fn is_allowed(&self, host: &str) -> bool {
        self.allowed.is_empty() || self.allowed.iter().any(|a| same_host(a, host))
    }

    fn is_insecure(&self, host: &str) -> bool {
        self.insecure.iter().any(|a| same_host(a, host))
    }

    fn scheme(&self, host: &str) -> &'static str {
        if self.is_insecure(host) { "http" } else { "https" }
    }
}

fn same_host(a: &str, b: &str) -> bool {
    let canon = |h: &str| {
        let h = h.trim().to_ascii_lowercase();
        if DOCKER_HUB.contains(&h.as_str()) { "docker.io".to_string() } else { h }
    };
    canon(a) == canon(b)
}

const DOCKER_HUB: [&str; 3] = ["docker.io", "index.docker.io", "registry-1.docker.io"];

/// Splits `host[:port]/path` into (host, repository path), checking both.
pub fn split_image(image: &str) -> Result<(String, String), RegistryError> {
    let invalid = |why: &str| RegistryError::InvalidReference(format!("image {image:?}: {why}"));
    let (host, repo) = image.split_once('/').ok_or_else(|| invalid("no registry host (want host/path)"))?;
    let (name, port) = match host.split_once(':') {
        Some((n, p)) => (n, Some(p)),
        None => (host, None),
    };
    let host_ok = !name.is_empty()
        && name.len() <= 253
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')
        && !name.starts_with(['.', '-'])
        && !name.ends_with(['.', '-']);
    let port_ok = port.is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.chars().all(|c| c.is_ascii_digit()));
    if !host_ok || !port_ok {
        return Err(invalid("malformed registry host"));
    }
    let repo_ok = repo.split('/').all(|part| {
        !part.is_empty()
            && part.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-'))
            && part.starts_with(|c: char| c.is_ascii_alphanumeric())
            && part.ends_with(|c: char| c.is_ascii_alphanumeric())
    });
    if !repo_ok || repo.len() > 255 {
        return Err(invalid("malformed repository path"));
    }
    Ok((host.to_ascii_lowercase(), repo.to_string()))
}

fn check_tag(tag: &str) -> Result<(), RegistryError> {
    let ok = !tag.is_empty()
        && tag.len() <= 128
        && tag.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_')
        && tag.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok { Ok(()) } else { Err(RegistryError::InvalidReference(format!("tag {tag:?} is malformed"))) }
}

pub use crate::core::report::is_digest;

#[derive(Deserialize)]
struct DockerConfig {
    #[serde(default)]
    auths: BTreeMap<String, DockerAuth>,
}

#[derive(Deserialize)]
struct DockerAuth {
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    auth: Option<String>,
}

/// The host a `dockerconfigjson` key names (`https://index.docker.io/v1/` → `index.docker.io`).
fn config_key_host(key: &str) -> String {
    let k = key.trim();
    let k = k.strip_prefix("https://").or_else(|| k.strip_prefix("http://")).unwrap_or(k);
    k.split('/').next().unwrap_or(k).to_ascii_lowercase()
}

/// Picks the credentials for `host` out of a `.dockerconfigjson` document. Entries for other hosts
/// are never returned; `Ok(None)` when the document has no entry for `host`.
pub fn credentials_for(dockerconfigjson: &[u8], host: &str) -> Result<Option<RegistryCredentials>, String> {
    let cfg: DockerConfig =
        serde_json::from_slice(dockerconfigjson).map_err(|e| format!("not a dockerconfigjson document: {e}"))?;
    let Some(entry) = cfg.auths.iter().find(|(k, _)| same_host(&config_key_host(k), host)).map(|(_, v)| v) else {
        return Ok(None);
    };
    if let (Some(u), Some(p)) = (&entry.username, &entry.password) {
        return Ok(Some(RegistryCredentials { username: u.clone(), password: p.clone() }));
    }
    if let Some(auth) = &entry.auth {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(auth.trim())
            .map_err(|_| format!("the entry for {host} has an auth field that is not base64"))?;
        let text =
            String::from_utf8(raw).map_err(|_| format!("the entry for {host} has an auth field that is not UTF-8"))?;
        let (u, p) =
            text.split_once(':').ok_or_else(|| format!("the entry for {host} has an auth field without ':'"))?;
        return Ok(Some(RegistryCredentials { username: u.to_string(), password: p.to_string() }));
    }
    Err(format!("the entry for {host} has neither username/password nor auth"))
}

/// A `WWW-Authenticate` challenge.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Challenge {
    Basic,
    Bearer { realm: String, service: Option<String> },
}

fn parse_challenge(header: &str) -> Option<Challenge> {
    let header = header.trim();
    let (scheme, rest) = header.split_once(' ').unwrap_or((header, ""));
    if scheme.eq_ignore_ascii_case("basic") {
        return Some(Challenge::Basic);
    }
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let mut params = BTreeMap::new();
    let mut chars = rest.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let key: String = std::iter::from_fn(|| chars.next_if(|c| *c != '=')).collect();
        if key.is_empty() || chars.next() != Some('=') {
            break;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => value.extend(chars.next()),
                    '"' => break,
                    c => value.push(c),
                }
            }
        } else {
            value = std::iter::from_fn(|| chars.next_if(|c| *c != ',')).collect::<String>().trim().to_string();
        }
        params.insert(key.trim().to_ascii_lowercase(), value);
    }
    let realm = params.remove("realm")?;
    Some(Challenge::Bearer { realm, service: params.remove("service") })
}

#[derive(Deserialize)]
struct TokenResponse {
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    access_token: Option<String>,
}

/// The real resolver.
pub struct OciResolver {
    settings: RegistrySettings,
    http: reqwest::Client,
}

impl OciResolver {
    /// A resolver with these settings (installs the crypto provider if none is).
    pub fn new(settings: RegistrySettings) -> Result<Self, RegistryError> {
        install_crypto_provider();
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(5))
            .timeout(settings.timeout)
            .build()
            .map_err(|e| RegistryError::Unreachable(format!("building the HTTP client: {e}")))?;
        Ok(OciResolver { settings, http })
    }

    /// The settings.
    pub fn settings(&self) -> &RegistrySettings {
        &self.settings
    }

    fn client(&self) -> Result<Client, RegistryError> {
        let config = ClientConfig {
            protocol: ClientProtocol::HttpsExcept(self.settings.insecure.clone()),
            connect_timeout: Some(Duration::from_secs(5)),
            read_timeout: Some(self.settings.timeout),
            platform_resolver: None,
            ..Default::default()
        };
        Client::try_from(config).map_err(|e| RegistryError::Unreachable(format!("building the registry client: {e}")))
    }

    /// With credentials: asks the registry how it wants to be authenticated and, for a token
    /// realm, exchanges the credentials for a bearer token, provided the realm is the registry's
    /// own host or a configured one.
    async fn authenticate(
        &self,
        host: &str,
        repo: &str,
        creds: RegistryCredentials,
    ) -> Result<RegistryAuth, RegistryError> {
        let scheme = self.settings.scheme(host);
        let probe = format!("{scheme}://{host}/v2/");
        let res = self.http.get(&probe).send().await.map_err(|e| unreachable(host, &e))?;
        let challenge = res
            .headers()
            .get(reqwest::header::WWW_AUTHENTICATE)
            .and_then(|h| h.to_str().ok())
            .and_then(parse_challenge);
        match challenge {
            // No challenge (or a scheme we do not speak): basic, which oci-client sends to the
            // registry host only.
            None | Some(Challenge::Basic) => Ok(RegistryAuth::Basic(creds.username, creds.password)),
            Some(Challenge::Bearer { realm, service }) => {
                let url = reqwest::Url::parse(&realm)
                    .map_err(|_| RegistryError::Unauthorized(format!("{host} names a malformed token realm")))?;
                let realm_host = match (url.host_str(), url.port()) {
                    (Some(h), Some(p)) => format!("{h}:{p}"),
                    (Some(h), None) => h.to_string(),
                    (None, _) => {
                        return Err(RegistryError::Unauthorized(format!("{host} names a token realm without a host")));
                    }
                };
                let trusted = same_host(&realm_host, host)
                    || self.settings.token_realms.iter().any(|r| same_host(r, &realm_host));
                if !trusted {
                    return Err(RegistryError::NotAllowed(format!(
                        "{host} sends credentials to the token realm {realm_host}, which is neither the registry nor a configured token realm: credentials not sent"
                    )));
                }
                let secure =
                    url.scheme() == "https" || (url.scheme() == "http" && self.settings.is_insecure(&realm_host));
                if !secure {
                    return Err(RegistryError::NotAllowed(format!(
                        "the token realm {realm_host} of {host} is not HTTPS: credentials not sent"
                    )));
                }
                let mut query = vec![("scope", format!("repository:{repo}:pull"))];
                if let Some(s) = service {
                    query.push(("service", s));
                }
                let res = self
                    .http
                    .get(url)
                    .query(&query)
                    .basic_auth(&creds.username, Some(&creds.password))
                    .send()
                    .await
                    .map_err(|e| unreachable(&realm_host, &e))?;
                let status = res.status();
                if status == reqwest::StatusCode::UNAUTHORIZED || status == reqwest::StatusCode::FORBIDDEN {
                    return Err(RegistryError::Unauthorized(format!(
                        "the token realm of {host} refused the credentials ({status})"
                    )));
                }
                if !status.is_success() {
                    return Err(RegistryError::Unreachable(format!("the token realm of {host} answered {status}")));
                }
                let body: TokenResponse = res.json().await.map_err(|_| {
                    RegistryError::Unreachable(format!(
                        "the token realm of {host} answered something else than a token"
                    ))
                })?;
                let token = body.token.or(body.access_token).filter(|t| !t.is_empty()).ok_or_else(|| {
                    RegistryError::Unreachable(format!("the token realm of {host} answered without a token"))
                })?;
                Ok(RegistryAuth::Bearer(token))
            }
        }
    }
}

fn unreachable(host: &str, e: &reqwest::Error) -> RegistryError {
    let what = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else {
        "request failed"
    };
    RegistryError::Unreachable(format!("{host}: {what}"))
}

/// Maps an `oci-client` error to a condition-level error.
fn map_oci(host: &str, image: &str, tag: &str, e: OciDistributionError) -> RegistryError {
    let not_found = || RegistryError::TagNotFound(format!("{image}:{tag} does not exist"));
    let unauthorized = || RegistryError::Unauthorized(format!("{host} refused access to {image}"));
    match e {
        OciDistributionError::ImageManifestNotFoundError(_) => not_found(),
        OciDistributionError::UnauthorizedError { .. } | OciDistributionError::AuthenticationFailure(_) => {
            unauthorized()
        }
        OciDistributionError::RegistryError { envelope, .. } => {
            let codes: Vec<&OciErrorCode> = envelope.errors.iter().map(|e| &e.code).collect();
            if codes.iter().any(|c| {
                matches!(c, OciErrorCode::ManifestUnknown | OciErrorCode::NameUnknown | OciErrorCode::NotFound)
            }) {
                not_found()
            } else if codes.iter().any(|c| matches!(c, OciErrorCode::Unauthorized | OciErrorCode::Denied)) {
                unauthorized()
            } else if codes.iter().any(|c| matches!(c, OciErrorCode::NameInvalid | OciErrorCode::TagInvalid)) {
                RegistryError::InvalidReference(format!("{host} says {image}:{tag} is not a valid reference"))
            } else {
                RegistryError::Unreachable(format!("{host} answered an error: {envelope}"))
            }
        }
        OciDistributionError::ServerError { code, .. } => match code {
            404 => not_found(),
            401 | 403 => unauthorized(),
            c => RegistryError::Unreachable(format!("{host} answered HTTP {c}")),
        },
        OciDistributionError::RequestError(e) => unreachable(host, &e),
        other => RegistryError::Unreachable(format!("{host}: {other}")),
    }
}

#[async_trait]
impl Resolve for OciResolver {
    async fn resolve(
        &self,
        image: &str,
        tag: &str,
        auth: Option<RegistryCredentials>,
    ) -> Result<String, RegistryError> {
        let (host, repo) = split_image(image)?;
        check_tag(tag)?;
        if !self.settings.is_allowed(&host) {
            return Err(RegistryError::NotAllowed(format!("registry {host} is not on the operator's allowlist")));
        }
        let work = async {
            let auth = match auth {
                Some(creds) => self.authenticate(&host, &repo, creds).await?,
                None => RegistryAuth::Anonymous,
            };
            let reference = Reference::with_tag(host.clone(), repo.clone(), tag.to_string());
            let client = self.client()?;
            client.fetch_manifest_digest(&reference, &auth).await.map_err(|e| map_oci(&host, image, tag, e))
        };
        let digest = tokio::time::timeout(self.settings.timeout, work).await.map_err(|_| {
            RegistryError::Unreachable(format!("{host}: no answer within {:?}", self.settings.timeout))
        })??;
        if is_digest(&digest) {
            Ok(digest)
        } else {
            Err(RegistryError::Unreachable(format!("{host} answered a digest that is not sha256: {digest:?}")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_split_and_check() {
        assert_eq!(
            split_image("registry.example.com/org/platform-tenant").unwrap(),
            ("registry.example.com".to_string(), "org/platform-tenant".to_string())
        );
        assert_eq!(split_image("127.0.0.1:5000/platform-tenant").unwrap().0, "127.0.0.1:5000");
        for bad in ["platform-tenant", "host:port/x", "-h/x", "h//x", "h/X", "h/x/", "h:99999999/x"] {
            assert_eq!(split_image(bad).unwrap_err().reason(), "InvalidReference", "{bad}");
        }
        assert!(check_tag("latest").is_ok());
        assert!(check_tag("staging-1.2_3").is_ok());
        assert!(check_tag(".x").is_err());
        assert!(check_tag("a/b").is_err());
        assert!(check_tag("").is_err());
    }

    #[test]
    fn allowlist_and_schemes() {
        let s = RegistrySettings::new(
            vec!["ghcr.io".into(), "127.0.0.1:5000".into()],
            vec!["127.0.0.1:5000".into()],
            vec![],
        );
        assert!(s.is_allowed("ghcr.io"));
        assert!(s.is_allowed("GHCR.io"));
        assert!(s.is_allowed("127.0.0.1:5000"));
        assert!(!s.is_allowed("127.0.0.1:5001"));
        assert!(!s.is_allowed("evil.example.com"));
        assert_eq!(s.scheme("127.0.0.1:5000"), "http");
        assert_eq!(s.scheme("ghcr.io"), "https");
        assert!(RegistrySettings::default().is_allowed("anything.example.com"));
        // Docker Hub's aliases are one registry.
        let hub = RegistrySettings::new(vec!["docker.io".into()], vec![], vec![]);
        assert!(hub.is_allowed("index.docker.io"));
    }

    #[tokio::test]
    async fn a_registry_off_the_allowlist_is_refused_without_a_request() {
        // Nothing listens on port 9 of a reserved TEST-NET address; a request would time out, not
        // be refused at once.
        let s = RegistrySettings::new(vec!["ghcr.io".into()], vec![], vec![]);
        let r = OciResolver::new(s).unwrap();
        let started = std::time::Instant::now();
        let e = r.resolve("192.0.2.1:9/x", "latest", None).await.unwrap_err();
        assert_eq!(e.reason(), "RegistryNotAllowed");
        assert!(started.elapsed() < Duration::from_secs(1));
        let e = r.resolve("ghcr.io/x", "bad/tag", None).await.unwrap_err();
        assert_eq!(e.reason(), "InvalidReference");
    }

    #[test]
    fn credentials_only_for_the_image_host() {
        let auth = base64::engine::general_purpose::STANDARD.encode("bob:s3cret");
        let doc = serde_json::json!({"auths": {
            "https://index.docker.io/v1/": {"auth": auth},
            "ghcr.io": {"username": "alice", "password": "pw"},
            "other.example.com:5000": {"username": "x", "password": "y"},
        }})
        .to_string();
        let ghcr = credentials_for(doc.as_bytes(), "ghcr.io").unwrap().unwrap();
        assert_eq!((ghcr.username.as_str(), ghcr.password.as_str()), ("alice", "pw"));
        let hub = credentials_for(doc.as_bytes(), "docker.io").unwrap().unwrap();
        assert_eq!((hub.username.as_str(), hub.password.as_str()), ("bob", "s3cret"));
        assert_eq!(credentials_for(doc.as_bytes(), "other.example.com").unwrap(), None);
        assert_eq!(credentials_for(doc.as_bytes(), "evil.example.com").unwrap(), None);
        assert!(credentials_for(doc.as_bytes(), "other.example.com:5000").unwrap().is_some());
        assert!(credentials_for(b"not json", "ghcr.io").is_err());
        assert!(!format!("{ghcr:?}").contains("pw"));
    }

    #[test]
    fn challenges_parse() {
        assert_eq!(parse_challenge("Basic realm=\"Registry\""), Some(Challenge::Basic));
        assert_eq!(
            parse_challenge(
                r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:x:pull""#
            ),
            Some(Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into())
            })
        );
        assert_eq!(
            parse_challenge("bearer service=ghcr.io, realm=https://ghcr.io/token"),
            Some(Challenge::Bearer { realm: "https://ghcr.io/token".into(), service: Some("ghcr.io".into()) })
        );
        assert_eq!(parse_challenge("Bearer service=\"x\""), None);
        assert_eq!(parse_challenge("Negotiate abc"), None);
    }

    #[test]
    fn oci_errors_map_to_reasons() {
        let env: oci_client::errors::OciEnvelope =
            serde_json::from_value(serde_json::json!({"errors": [{"code": "MANIFEST_UNKNOWN", "message": "x"}]}))
                .unwrap();
        let e = map_oci("h", "h/x", "t", OciDistributionError::RegistryError { envelope: env, url: String::new() });
        assert_eq!(e.reason(), "TagNotFound");
        let e = map_oci("h", "h/x", "t", OciDistributionError::UnauthorizedError { url: String::new() });
        assert_eq!(e.reason(), "Unauthorized");
        let e = map_oci(
            "h",
            "h/x",
            "t",
            OciDistributionError::ServerError { code: 503, url: String::new(), message: String::new() },
        );
        assert_eq!(e.reason(), "RegistryUnreachable");
        assert!(is_digest(&format!("sha256:{}", "a".repeat(64))));
        assert!(!is_digest("sha256:abc"));
    }
}
