//! The real [`Aws`] implementation on aws-sdk-ec2 and aws-sdk-ssm.

use super::*;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_ssm::error::ProvideErrorMetadata;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use tokio::sync::Mutex;

/// Settings for reaching AWS. Endpoints are for stand-ins (moto, the fleet simulator); in a real
/// deployment they are left empty and the SDK's own resolution applies.
#[derive(Clone, Debug, Default)]
pub struct AwsSettings {
    /// Region when a tenant names none.
    pub default_region: String,
    /// EC2 endpoint override.
    pub ec2_endpoint: Option<String>,
    /// SSM endpoint override.
    pub ssm_endpoint: Option<String>,
    /// Static credentials (for stand-ins); the default provider chain when `None`.
    pub static_credentials: Option<(String, String)>,
}

#[derive(Clone)]
struct Clients {
    ec2: aws_sdk_ec2::Client,
    ssm: aws_sdk_ssm::Client,
}

/// AWS through the SDK, with clients cached per (role, region).
pub struct SdkAws {
    settings: AwsSettings,
    base: SdkConfig,
    clients: Mutex<HashMap<AwsScope, Clients>>,
}

impl SdkAws {
    /// Loads the base configuration (credentials chain, retry settings).
    pub async fn new(settings: AwsSettings) -> Self {
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .region(Region::new(settings.default_region.clone()))
            .retry_config(aws_config::retry::RetryConfig::adaptive().with_max_attempts(4));
        if let Some((key, secret)) = &settings.static_credentials {
            loader = loader.credentials_provider(aws_sdk_ssm::config::Credentials::new(
                key.clone(),
                secret.clone(),
                None,
                None,
                "tenant-operator-static",
            ));
        }
        let base = loader.load().await;
        SdkAws { settings, base, clients: Mutex::new(HashMap::new()) }
    }

    async fn clients(&self, scope: &AwsScope) -> Clients {
        let mut cache = self.clients.lock().await;
        if let Some(c) = cache.get(scope) {
            return c.clone();
        }
        let region = Region::new(scope.region.clone().unwrap_or_else(|| self.settings.default_region.clone()));
        let mut builder = self.base.to_builder().region(region.clone());
        if let Some(arn) = &scope.assume_role_arn {
            let provider = aws_config::sts::AssumeRoleProvider::builder(arn.clone())
                .session_name("tenant-operator")
                .region(region)
                .configure(&self.base)
                .build()
                .await;
            builder = builder.credentials_provider(aws_sdk_ssm::config::SharedCredentialsProvider::new(provider));
        }
        let config = builder.build();
        let mut ec2 = aws_sdk_ec2::config::Builder::from(&config);
        if let Some(url) = &self.settings.ec2_endpoint {
            ec2 = ec2.endpoint_url(url);
        }
        let mut ssm = aws_sdk_ssm::config::Builder::from(&config);
        if let Some(url) = &self.settings.ssm_endpoint {
            ssm = ssm.endpoint_url(url);
        }
        let c = Clients {
            ec2: aws_sdk_ec2::Client::from_conf(ec2.build()),
            ssm: aws_sdk_ssm::Client::from_conf(ssm.build()),
        };
        cache.insert(scope.clone(), c.clone());
        c
    }
}

const THROTTLE_CODES: &[&str] =
    &["ThrottlingException", "Throttling", "RequestLimitExceeded", "TooManyRequestsException", "TooManyUpdates"];

fn classify<E: ProvideErrorMetadata + std::fmt::Debug>(err: aws_sdk_ssm::error::SdkError<E>) -> AwsError {
    let code = err.code().unwrap_or_default().to_string();
    let message = err.message().map(str::to_string).unwrap_or_else(|| format!("{err:?}"));
    let text = if code.is_empty() { message } else { format!("{code}: {message}") };
    if THROTTLE_CODES.contains(&code.as_str()) {
        AwsError::Throttled(text)
    } else if code.contains("NotFound")
        || code.contains("DoesNotExist")
        || code == "InvalidDocument"
        || code == "InvalidCommandId"
        || code == "ParameterNotFound"
    {
        AwsError::NotFound(text)
    } else if code.contains("AccessDenied") || code.contains("Unauthorized") || code == "AuthFailure" {
        AwsError::AccessDenied(text)
    } else if code.starts_with("Invalid") || code.contains("Validation") {
        AwsError::Invalid(text)
    } else {
        AwsError::Other(text)
    }
}

/// sha256 hex of a document's content, as SSM reports it in `Hash`.
pub fn document_hash(content: &str) -> String {
    hex::encode(Sha256::digest(content.as_bytes()))
}

#[async_trait]
impl Aws for SdkAws {
    async fn describe_instances(&self, scope: &AwsScope, query: &InstanceQuery) -> Result<Vec<InstanceInfo>, AwsError> {
        use aws_sdk_ec2::types::Filter;
        let c = self.clients(scope).await;
        let mut out = Vec::new();
        let mut next: Option<String> = None;
        loop {
            let mut req = c.ec2.describe_instances().filters(
                Filter::builder()
                    .name("instance-state-name")
                    .values("pending")
                    .values("running")
                    .values("stopping")
                    .values("stopped")
                    .build(),
            );
            if !query.ids.is_empty() {
                req = req.filters(Filter::builder().name("instance-id").set_values(Some(query.ids.clone())).build());
            }
            for (k, v) in &query.tags {
                req = req.filters(Filter::builder().name(format!("tag:{k}")).set_values(Some(v.clone())).build());
            }
            if let Some(token) = &next {
                req = req.next_token(token);
            }
            let resp = req.send().await.map_err(classify)?;
            for r in resp.reservations() {
                for i in r.instances() {
                    let Some(id) = i.instance_id() else { continue };
                    out.push(InstanceInfo {
                        id: id.to_string(),
                        state: i.state().and_then(|s| s.name()).map(|n| n.as_str().to_string()).unwrap_or_default(),
                        tags: i
                            .tags()
                            .iter()
                            .filter_map(|t| Some((t.key()?.to_string(), t.value().unwrap_or_default().to_string())))
                            .collect(),
                    });
                }
            }
            next = resp.next_token().map(str::to_string);
            if next.is_none() {
                return Ok(out);
            }
        }
    }

    async fn ping(&self, scope: &AwsScope, ids: &[String]) -> Result<BTreeMap<String, Ping>, AwsError> {
        use aws_sdk_ssm::types::{InstanceInformationStringFilter, PingStatus};
        let c = self.clients(scope).await;
        let mut out: BTreeMap<String, Ping> = ids.iter().map(|i| (i.clone(), Ping::Unknown)).collect();
        for chunk in ids.chunks(50) {
            let filter = InstanceInformationStringFilter::builder()
                .key("InstanceIds")
                .set_values(Some(chunk.to_vec()))
                .build()
                .map_err(|e| AwsError::Invalid(e.to_string()))?;
            let mut next: Option<String> = None;
            loop {
                let mut req = c.ssm.describe_instance_information().filters(filter.clone());
                if let Some(t) = &next {
                    req = req.next_token(t);
                }
                let resp = req.send().await.map_err(classify)?;
                for info in resp.instance_information_list() {
                    let Some(id) = info.instance_id() else { continue };
                    let ping = match info.ping_status() {
                        Some(PingStatus::Online) => Ping::Online,
                        Some(_) => Ping::ConnectionLost,
                        None => Ping::Unknown,
                    };
                    out.insert(id.to_string(), ping);
                }
                next = resp.next_token().map(str::to_string);
                if next.is_none() {
                    break;
                }
            }
        }
        Ok(out)
    }

    async fn ensure_document(&self, scope: &AwsScope, name: &str, content: &str) -> Result<String, AwsError> {
        use aws_sdk_ssm::types::{DocumentFormat, DocumentType};
        let c = self.clients(scope).await;
        let want = document_hash(content);
        let current = match c.ssm.describe_document().name(name).send().await {
            Ok(r) => r.document,
            Err(e) => match classify(e) {
                AwsError::NotFound(_) => None,
                other => return Err(other),
            },
        };
        let Some(current) = current else {
            let created = c
                .ssm
                .create_document()
                .name(name)
                .content(content)
                .document_type(DocumentType::Command)
                .document_format(DocumentFormat::Json)
                .send()
                .await
                .map_err(classify)?;
            return Ok(created.document_description().and_then(|d| d.document_version()).unwrap_or("1").to_string());
        };
        if current.hash() == Some(want.as_str()) {
            return Ok(current.default_version().or(current.document_version()).unwrap_or("1").to_string());
        }
        let version = match c
            .ssm
            .update_document()
            .name(name)
            .content(content)
            .document_version("$LATEST")
            .document_format(DocumentFormat::Json)
            .send()
            .await
        {
            Ok(r) => r.document_description().and_then(|d| d.document_version()).unwrap_or_default().to_string(),
            Err(e) if e.code() == Some("DuplicateDocumentContent") => {
                // An older version already has this content (the operator was rolled back): find it.
                let latest: u32 = current.latest_version().and_then(|v| v.parse().ok()).unwrap_or(1);
                let mut found = None;
                for v in (1..=latest).rev() {
                    let d = c
                        .ssm
                        .describe_document()
                        .name(name)
                        .document_version(v.to_string())
                        .send()
                        .await
                        .map_err(classify)?;
                    if d.document().and_then(|d| d.hash()) == Some(want.as_str()) {
                        found = Some(v.to_string());
                        break;
                    }
                }
                found.ok_or_else(|| AwsError::Other("document content exists but no version matches".into()))?
            }
            Err(e) => return Err(classify(e)),
        };
        c.ssm.update_document_default_version().name(name).document_version(&version).send().await.map_err(classify)?;
        Ok(version)
    }

    async fn send_command(&self, scope: &AwsScope, cmd: &SendCommand) -> Result<String, AwsError> {
        let c = self.clients(scope).await;
        let params: HashMap<String, Vec<String>> =
            cmd.parameters.iter().map(|(k, v)| (k.clone(), vec![v.clone()])).collect();
        let resp = c
            .ssm
            .send_command()
            .document_name(&cmd.document)
            .document_version(&cmd.document_version)
            .set_instance_ids(Some(cmd.instances.clone()))
            .set_parameters(Some(params))
            .comment(&cmd.comment)
            .timeout_seconds(cmd.timeout_seconds.max(30))
            .send()
            .await
            .map_err(classify)?;
        resp.command()
            .and_then(|c| c.command_id())
            .map(str::to_string)
            .ok_or_else(|| AwsError::Other("SendCommand returned no command id".into()))
    }

    async fn find_command(&self, scope: &AwsScope, instance: &str, token: &str) -> Result<Option<String>, AwsError> {
        let c = self.clients(scope).await;
        let mut next: Option<String> = None;
        loop {
            let mut req = c.ssm.list_commands().instance_id(instance).max_results(50);
            if let Some(t) = &next {
                req = req.next_token(t);
            }
            let resp = req.send().await.map_err(classify)?;
            for cmd in resp.commands() {
                if cmd.comment().is_some_and(|c| c.contains(token)) {
                    return Ok(cmd.command_id().map(str::to_string));
                }
            }
            next = resp.next_token().map(str::to_string);
            if next.is_none() {
                return Ok(None);
            }
        }
    }

    async fn commands_since(
        &self,
        scope: &AwsScope,
        document: &str,
        since: jiff::Timestamp,
    ) -> Result<Vec<CommandProgress>, AwsError> {
        use aws_sdk_ssm::types::{CommandFilter, CommandFilterKey};
        let c = self.clients(scope).await;
        let filter = |key: CommandFilterKey, value: String| {
            CommandFilter::builder().key(key).value(value).build().map_err(|e| AwsError::Invalid(e.to_string()))
        };
        // Whole seconds: SSM's date filter takes ISO 8601 without a fraction.
        let after = filter(CommandFilterKey::InvokedAfter, since.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())?;
        let doc = filter(CommandFilterKey::DocumentName, document.to_string())?;
        let mut out = Vec::new();
        let mut next: Option<String> = None;
        loop {
            let mut req = c.ssm.list_commands().filters(after.clone()).filters(doc.clone()).max_results(50);
            if let Some(t) = &next {
                req = req.next_token(t);
            }
            let resp = req.send().await.map_err(classify)?;
            for cmd in resp.commands() {
                let Some(id) = cmd.command_id() else { continue };
                out.push(CommandProgress {
                    id: id.to_string(),
                    status: InvocationStatus::parse_with_details(
                        cmd.status().map(|s| s.as_str()).unwrap_or("Pending"),
                        cmd.status_details(),
                    ),
                    targets: u32::try_from(cmd.target_count()).unwrap_or(0),
                    completed: u32::try_from(cmd.completed_count()).unwrap_or(0),
                });
            }
            next = resp.next_token().map(str::to_string);
            if next.is_none() {
                return Ok(out);
            }
        }
    }

    async fn invocation(
        &self,
        scope: &AwsScope,
        command_id: &str,
        instance: &str,
    ) -> Result<Option<Invocation>, AwsError> {
        let c = self.clients(scope).await;
        match c.ssm.get_command_invocation().command_id(command_id).instance_id(instance).send().await {
            Ok(r) => Ok(Some(Invocation {
                status: InvocationStatus::parse_with_details(
                    r.status().map(|s| s.as_str()).unwrap_or("Pending"),
                    r.status_details(),
                ),
                stdout: r.standard_output_content().unwrap_or_default().to_string(),
                stderr: r.standard_error_content().unwrap_or_default().to_string(),
            })),
            Err(e) => match classify(e) {
                AwsError::NotFound(_) => Ok(None),
                AwsError::Other(m) if m.contains("InvocationDoesNotExist") => Ok(None),
                other => Err(other),
            },
        }
    }

    async fn command_invocations(&self, scope: &AwsScope, command_id: &str) -> Result<Vec<ListedInvocation>, AwsError> {
        let c = self.clients(scope).await;
        let mut out = Vec::new();
        let mut next: Option<String> = None;
        loop {
            let mut req = c.ssm.list_command_invocations().command_id(command_id).details(true).max_results(50);
            if let Some(t) = &next {
                req = req.next_token(t);
            }
            let resp = match req.send().await {
                Ok(r) => r,
                // A command SSM does not know (yet): no invocation to report.
                Err(e) => match classify(e) {
                    AwsError::NotFound(_) => return Ok(out),
                    other => return Err(other),
                },
            };
            for inv in resp.command_invocations() {
                let Some(instance) = inv.instance_id() else { continue };
                let status = InvocationStatus::parse_with_details(
                    inv.status().map(|s| s.as_str()).unwrap_or("Pending"),
                    inv.status_details(),
                );
                // The document has one step: its plugin's output is the host's.
                let output = inv.command_plugins().first().and_then(|p| p.output()).unwrap_or_default();
                out.push(ListedInvocation::from_listing(instance.to_string(), status, output));
            }
            next = resp.next_token().map(str::to_string);
            if next.is_none() {
                return Ok(out);
            }
        }
    }

    async fn put_secure_parameter(&self, scope: &AwsScope, name: &str, value: &str) -> Result<(), AwsError> {
        use aws_sdk_ssm::types::{ParameterTier, ParameterType};
        let c = self.clients(scope).await;
        let put = |tier: ParameterTier| {
            c.ssm
                .put_parameter()
                .name(name)
                .value(value)
                .r#type(ParameterType::SecureString)
                .tier(tier)
                .overwrite(true)
                .send()
        };
        let tier = if value.len() > 4096 { ParameterTier::Advanced } else { ParameterTier::Standard };
        match put(tier.clone()).await.map_err(classify) {
            // An advanced parameter never goes back to standard: a short value keeps its tier.
            Err(AwsError::Invalid(_)) if tier == ParameterTier::Standard => {
                put(ParameterTier::Advanced).await.map(|_| ()).map_err(classify)
            }
            other => other.map(|_| ()),
        }
    }

    async fn list_parameters(&self, scope: &AwsScope, path: &str) -> Result<Vec<String>, AwsError> {
        let c = self.clients(scope).await;
        let mut out = Vec::new();
        let mut next: Option<String> = None;
        loop {
            let mut req = c.ssm.get_parameters_by_path().path(path).recursive(true).with_decryption(false);
            if let Some(t) = &next {
                req = req.next_token(t);
            }
            let resp = req.send().await.map_err(classify)?;
            out.extend(resp.parameters().iter().filter_map(|p| p.name().map(str::to_string)));
            next = resp.next_token().map(str::to_string);
            if next.is_none() {
                return Ok(out);
            }
        }
    }

    async fn delete_parameters(&self, scope: &AwsScope, names: &[String]) -> Result<(), AwsError> {
        let c = self.clients(scope).await;
        for chunk in names.chunks(10) {
            c.ssm.delete_parameters().set_names(Some(chunk.to_vec())).send().await.map_err(classify)?;
        }
        Ok(())
    }
}
