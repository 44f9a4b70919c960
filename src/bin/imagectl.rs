//! imagectl: image-service from a terminal. Upload files (in parallel, with
//! progress, resuming by themselves after a broken connection), list with every filter, fetch metadata, download (resuming a
//! partial file), get a download URL, update and delete, export a user's
//! images with their records; and, for moderators, review, approve,
//! quarantine and remove images, and find the images like one.
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use futures::StreamExt;
use image_service::pb;
use image_service::pb::image_service_client::ImageServiceClient;
use image_service::pb::moderation_service_client::ModerationServiceClient;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

/// Size of the chunks an upload is sent in.
const CHUNK: usize = 1024 * 1024;

/// Talk to image-service from a terminal.
#[derive(Parser)]
#[command(name = "imagectl", version, about)]
struct Cli {
    /// The service's gRPC address.
    #[arg(
        long,
        env = "IMAGECTL_ADDR",
        default_value = "http://127.0.0.1:50051",
        global = true
    )]
    addr: String,
    /// Act as this user (trusted-header mode: sent as `x-user-id`).
    #[arg(long, env = "IMAGECTL_USER", global = true)]
    user: Option<String>,
    /// A bearer token (jwt mode); used instead of --user.
    #[arg(long, env = "IMAGECTL_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
    /// Print JSON instead of tables and sentences, for scripts.
    #[arg(long, global = true)]
    json: bool,
    /// PEM file of the CA that signed the service's certificate, for an
    /// `https://` address (default: the system's roots are not used, so
    /// this is required for https).
    #[arg(long, env = "IMAGECTL_TLS_CA", global = true)]
    tls_ca: Option<PathBuf>,
    /// PEM client certificate, for a service that requires mutual TLS.
    #[arg(long, env = "IMAGECTL_TLS_CERT", requires = "tls_key", global = true)]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "IMAGECTL_TLS_KEY", requires = "tls_cert", global = true)]
    tls_key: Option<PathBuf>,
    /// The name the service's certificate is checked against (default: the
    /// address's host).
    #[arg(long, env = "IMAGECTL_TLS_NAME", global = true)]
    tls_name: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Upload image files, several at once.
    Upload {
        #[arg(required = true)]
        files: Vec<PathBuf>,
        #[arg(long)]
        title: Option<String>,
        #[arg(long)]
        description: Option<String>,
        /// A tag; repeat for more.
        #[arg(long = "tag")]
        tags: Vec<String>,
        #[arg(long)]
        location: Option<String>,
        /// An attribute as KEY=VALUE; repeat for more.
        #[arg(long = "attr", value_parser = parse_attribute)]
        attributes: Vec<(String, String)>,
        /// How many files are uploaded at once.
        #[arg(long, default_value_t = 4)]
        parallel: usize,
        /// Send at most this many bytes per second per file (e.g. 512KiB),
        /// to spare a slow or metered link.
        #[arg(long, value_parser = parse_rate)]
        limit_rate: Option<u64>,
        /// Send the bytes straight to the store through presigned URLs
        /// (GetUploadUrls, in 8 MiB parts), then have the service check and
        /// commit them (CompleteUpload); a failed part is sent again.
        #[arg(long, conflicts_with = "limit_rate")]
        direct: bool,
    },
    /// List images, newest first.
    List {
        #[arg(long)]
        owner: Option<String>,
        #[arg(long)]
        tag: Option<String>,
        #[arg(long)]
        location: Option<String>,
        #[arg(long)]
        content_type: Option<String>,
        /// Created at or after this time (RFC 3339, e.g. 2026-01-31T00:00:00Z).
        #[arg(long, value_parser = parse_time)]
        after: Option<prost_types::Timestamp>,
        /// Created before this time (RFC 3339).
        #[arg(long, value_parser = parse_time)]
        before: Option<prost_types::Timestamp>,
        /// At most this many images (all pages are read until then).
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// Show one image's metadata.
    Get { id: String },
    /// Download an image. Bytes go to `OUTPUT.part` first, which is renamed
    /// to OUTPUT once complete and verified; an interrupted download resumes
    /// from its `.part` file. An existing OUTPUT is never appended to or
    /// replaced unless `--force`.
    Download {
        id: String,
        /// Output file; default: the image's file name (its last path
        /// component only), in the current directory.
        #[arg(short, long)]
        output: Option<PathBuf>,
        /// Replace OUTPUT if it exists.
        #[arg(long)]
        force: bool,
        #[arg(long, default_value = "")]
        variant: String,
    },
    /// Print a presigned download URL.
    Url {
        id: String,
        /// Validity, e.g. 10m or 1h.
        #[arg(long, value_parser = humantime::parse_duration)]
        expires: Option<Duration>,
        /// Make browsers save the file rather than show it.
        #[arg(long)]
        attachment: bool,
        #[arg(long, default_value = "")]
        variant: String,
    },
    /// Change the title, description, tags or location (only those given).
    Update {
        id: String,
        #[arg(long)]
        title: Option<String>,
        #[arg(long)]
        description: Option<String>,
        /// The new tags, replacing the old ones; repeat for more.
        #[arg(long = "tag")]
        tags: Option<Vec<String>>,
        #[arg(long)]
        location: Option<String>,
    },
    /// Delete images.
    Delete {
        #[arg(required = true)]
        ids: Vec<String>,
    },
    /// Export a user's images into DIR: each original as `ID.EXT` and its
    /// record as `ID.json`, then `export.json` listing them. Every original
    /// is checked against the record's size, SHA-256 and CRC32C before it
    /// takes its name (bytes go to `ID.EXT.part` first), so a file under
    /// its final name is always whole and verified. Run it again to resume:
    /// originals already exported and still verifying are not downloaded
    /// again, a partial one is continued.
    Export {
        /// Where the files go (created if missing).
        dir: PathBuf,
        /// Whose images; default: the caller's own.
        #[arg(long)]
        owner: Option<String>,
        /// How many images are downloaded at once.
        #[arg(long, default_value_t = 4)]
        parallel: usize,
        /// The most images the listing may hold: past it the export stops
        /// with an error before downloading anything (raise it for a user
        /// who really holds more).
        #[arg(long, default_value_t = DEFAULT_EXPORT_MAX_IMAGES)]
        max_images: usize,
    },
    /// Print image events as they come (for identities the service names in
    /// --event-watchers), one line each (`--json`: one JSON object a line),
    /// each with the cursor to resume after it. A stream the service ends
    /// with a resume cursor (the server stops, the watcher fell behind) is
    /// watched again from there; on exit the cursor to resume from is
    /// printed on stderr.
    Watch {
        /// Where to start: a cursor printed before, `oldest` for every event
        /// retained; by default only events from now.
        #[arg(long = "from", default_value = "")]
        from: String,
        /// Only the events of this user's images.
        #[arg(long)]
        owner: Option<String>,
        /// Stop after this many events.
        #[arg(long)]
        count: Option<u64>,
    },
    /// List the images waiting for moderators (for identities the service
    /// names in --moderators), those waiting longest first.
    Review {
        /// pending, quarantined or removed.
        #[arg(long, default_value = "quarantined", value_parser = parse_state)]
        state: pb::ImageState,
        /// At most this many images (all pages are read until then).
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// Find the images whose PDQ perceptual hash is near an image's or a
    /// given hash (moderators): copies resized, re-encoded, cropped a
    /// little or brightened. Nearest first, with their distance.
    #[command(group(clap::ArgGroup::new("query").required(true).args(["id", "hash"])))]
    Similar {
        /// The image whose copies are wanted (not listed itself).
        id: Option<String>,
        /// A PDQ hash (64 hex digits) instead of an image.
        #[arg(long)]
        hash: Option<String>,
        /// The largest Hamming distance, 0 to 31 (default: the service's,
        /// 31).
        #[arg(long)]
        distance: Option<u32>,
        /// At most this many images (at most 1000).
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Approve an image (moderators): it is visible to everyone again.
    Approve {
        id: String,
        /// A reason category (a-z, 0-9, _ and -).
        #[arg(long, default_value = "")]
        reason: String,
        /// Only if the image's etag is still this one.
        #[arg(long)]
        etag: Option<String>,
    },
    /// Quarantine an image (moderators): hidden from everyone but its
    /// owner and the moderators; its bytes are kept.
    Quarantine {
        id: String,
        /// A reason category the owner sees (a-z, 0-9, _ and -): spam,
        /// nudity, copyright, ...
        #[arg(long)]
        reason: String,
        #[arg(long)]
        etag: Option<String>,
    },
    /// Remove an image (moderators): every byte of it is deleted, its
    /// record stays in state removed. Final.
    Remove {
        id: String,
        /// A reason category the owner sees (a-z, 0-9, _ and -).
        #[arg(long)]
        reason: String,
        #[arg(long)]
        etag: Option<String>,
    },
}

fn parse_attribute(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| "expected KEY=VALUE".to_owned())
}

fn parse_rate(text: &str) -> Result<u64, String> {
    let rate: bytesize::ByteSize = text.parse()?;
    if rate.as_u64() == 0 {
        return Err("the rate must be positive".into());
    }
    Ok(rate.as_u64())
}

fn parse_time(text: &str) -> Result<prost_types::Timestamp, String> {
    let time = humantime::parse_rfc3339_weak(text).map_err(|e| e.to_string())?;
    Ok(prost_types::Timestamp::from(time))
}

/// A caller of the service with an identity.
#[derive(Clone)]
struct Caller {
    client: ImageServiceClient<Channel>,
    /// The moderation service, on the same connection.
    moderation: ModerationServiceClient<Channel>,
    identity: (&'static str, String),
}

impl Caller {
    fn request<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        if let Ok(value) = self.identity.1.parse() {
            request.metadata_mut().insert(self.identity.0, value);
        }
        request
    }
}

/// What a status means to a person at a terminal.
fn explain(status: &Status) -> String {
    let hint = match status.code() {
        Code::NotFound => "no such image",
        Code::Unauthenticated => "not identified: pass --user (or --token in jwt mode)",
        Code::PermissionDenied => "only the image's owner may do this",
        Code::InvalidArgument => "the request was refused",
        Code::OutOfRange => "size or range mismatch",
        Code::DataLoss => "the bytes were damaged on the way (checksum mismatch)",
        Code::ResourceExhausted if is_final(status) => "over a limit of the service",
        Code::ResourceExhausted => "the service is busy",
        Code::AlreadyExists => "idempotency key reused with other content",
        Code::Aborted => "changed concurrently; try again",
        Code::Unavailable => "the service or its storage is unavailable; try again later",
        Code::DeadlineExceeded => "timed out",
        Code::Cancelled => "cancelled",
        _ => "the service failed",
    };
    if status.message().is_empty() {
        hint.to_owned()
    } else {
        format!("{hint}: {}", status.message())
    }
}

/// Whether the service marked a refusal as one that retrying cannot change
/// (an image over a limit), through gRPC's retry pushback.
fn is_final(status: &Status) -> bool {
    status
        .metadata()
        .get(image_service::grpc::RETRY_PUSHBACK)
        .and_then(|value| value.to_str().ok())
        .and_then(|ms| ms.parse::<i64>().ok())
        .is_some_and(|ms| ms < 0)
}

/// Whether a failed call is worth making again: the service was busy
/// (RESOURCE_EXHAUSTED, unless marked final) or, for a call that changes
/// nothing, unavailable (a replica going away, a store out of reach).
fn worth_retrying(status: &Status, changes_nothing: bool) -> bool {
    match status.code() {
        Code::ResourceExhausted => !is_final(status),
        Code::Unavailable => changes_nothing,
        _ => false,
    }
}

/// A closure that makes one call of `method` with a fresh `message`, for
/// [`retrying`].
macro_rules! rpc {
    ($caller:expr, $method:ident, $message:expr) => {
        || {
            let mut client = $caller.client.clone();
            let request = $caller.request($message);
            async move { client.$method(request).await }
        }
    };
}

/// Attempts of one call before imagectl gives up on a busy service.
const CALL_ATTEMPTS: u32 = 6;

/// Makes `call` until it succeeds or fails in a way retrying cannot
/// change, with backoff between attempts, saying so on stderr (above
/// `bar` when there is one).
async fn retrying<T, F, Fut>(
    what: &str,
    changes_nothing: bool,
    bar: Option<&ProgressBar>,
    mut call: F,
) -> Result<T, Status>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, Status>>,
{
    let mut attempt = 0;
    loop {
        match call().await {
            Err(status)
                if attempt + 1 < CALL_ATTEMPTS && worth_retrying(&status, changes_nothing) =>
            {
                attempt += 1;
                let wait = backoff(attempt);
                let say = || {
                    eprintln!(
                        "imagectl: {what}: {}; retrying in {:.1} s (attempt {} of {CALL_ATTEMPTS})",
                        explain(&status),
                        wait.as_secs_f64(),
                        attempt + 1
                    )
                };
                match bar {
                    Some(bar) => bar.suspend(say),
                    None => say(),
                }
                tokio::time::sleep(wait).await;
            }
            result => return result,
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            let text = match error.downcast_ref::<Status>() {
                Some(status) => explain(status),
                None => format!("{error:#}"),
            };
            eprintln!("imagectl: {text}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let identity = match (&cli.token, &cli.user) {
        (Some(token), _) => ("authorization", format!("Bearer {token}")),
        (None, Some(user)) => ("x-user-id", user.clone()),
        (None, None) => {
            bail!("say who you are: --user NAME (or IMAGECTL_USER), or --token in jwt mode")
        }
    };
    let mut endpoint = Channel::from_shared(cli.addr.clone())
        .context("--addr is not a URL such as http://127.0.0.1:50051")?;
    if cli.addr.starts_with("https://") {
        let ca = cli
            .tls_ca
            .as_ref()
            .context("an https:// address needs --tls-ca (the CA of the service's certificate)")?;
        let ca = std::fs::read(ca).with_context(|| format!("reading {}", ca.display()))?;
        let mut tls = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(ca));
        if let (Some(cert), Some(key)) = (&cli.tls_cert, &cli.tls_key) {
            let cert =
                std::fs::read(cert).with_context(|| format!("reading {}", cert.display()))?;
            let key = std::fs::read(key).with_context(|| format!("reading {}", key.display()))?;
            tls = tls.identity(tonic::transport::Identity::from_pem(cert, key));
        }
        if let Some(name) = &cli.tls_name {
            tls = tls.domain_name(name.clone());
        }
        endpoint = endpoint.tls_config(tls).context("the TLS settings")?;
    }
    let channel = endpoint
        .connect()
        .await
        .with_context(|| format!("cannot reach image-service at {}", cli.addr))?;
    let caller = Caller {
        client: ImageServiceClient::new(channel.clone()).max_decoding_message_size(8 * 1024 * 1024),
        moderation: ModerationServiceClient::new(channel)
            .max_decoding_message_size(8 * 1024 * 1024),
        identity,
    };
    match cli.command {
        Command::Upload {
            files,
            title,
            description,
            tags,
            location,
            attributes,
            parallel,
            limit_rate,
            direct,
        } => {
            let spec = pb::ImageSpec {
                title: title.unwrap_or_default(),
                description: description.unwrap_or_default(),
                tags,
                location: location.unwrap_or_default(),
                attributes: attributes.into_iter().collect::<HashMap<_, _>>(),
                ..Default::default()
            };
            let how = if direct {
                Delivery::Direct
            } else {
                Delivery::Streamed { limit_rate }
            };
            upload_all(&caller, files, spec, parallel.max(1), how, cli.json).await
        }
        Command::List {
            owner,
            tag,
            location,
            content_type,
            after,
            before,
            limit,
        } => {
            let request = pb::ListImagesRequest {
                owner_id: owner.unwrap_or_default(),
                tag: tag.unwrap_or_default(),
                location: location.unwrap_or_default(),
                content_type: content_type.unwrap_or_default(),
                created_after: after,
                created_before: before,
                page_size: limit.min(1000) as i32,
                page_token: String::new(),
            };
            let images = list(&caller, request, limit).await?;
            if cli.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(
                        &images.iter().map(image_json).collect::<Vec<_>>()
                    )?
                );
            } else {
                print_table(&images);
            }
            Ok(())
        }
        Command::Get { id } => {
            let image = get(&caller, &id).await?;
            if cli.json {
                println!("{}", serde_json::to_string_pretty(&image_json(&image))?);
            } else {
                print_details(&image);
            }
            Ok(())
        }
        Command::Download {
            id,
            output,
            force,
            variant,
        } => download(&caller, &id, (output, force), variant, cli.json).await,
        Command::Url {
            id,
            expires,
            attachment,
            variant,
        } => {
            let request = pb::GetDownloadUrlRequest {
                image_id: id,
                variant,
                // No preference: JPEG, the same bytes on every call.
                accept: Vec::new(),
                expires_in: expires.map(|d| prost_types::Duration {
                    seconds: d.as_secs() as i64,
                    nanos: 0,
                }),
                disposition: if attachment {
                    pb::Disposition::Attachment
                } else {
                    pb::Disposition::Inline
                } as i32,
            };
            let response = retrying(
                "url",
                true,
                None,
                rpc!(caller, get_download_url, request.clone()),
            )
            .await?
            .into_inner();
            if cli.json {
                let expire = response.expire_time.map(format_time).unwrap_or_default();
                println!(
                    "{}",
                    serde_json::json!({ "url": response.url, "expire_time": expire })
                );
            } else {
                println!("{}", response.url);
            }
            Ok(())
        }
        Command::Update {
            id,
            title,
            description,
            tags,
            location,
        } => {
            let mut paths = Vec::new();
            for (name, set) in [
                ("title", title.is_some()),
                ("description", description.is_some()),
                ("tags", tags.is_some()),
                ("location", location.is_some()),
            ] {
                if set {
                    paths.push(name.to_owned());
                }
            }
            if paths.is_empty() {
                bail!("nothing to change: give --title, --description, --tag or --location");
            }
            let request = pb::UpdateImageRequest {
                image_id: id,
                title: title.unwrap_or_default(),
                description: description.unwrap_or_default(),
                tags: tags.unwrap_or_default(),
                location: location.unwrap_or_default(),
                update_mask: Some(prost_types::FieldMask { paths }),
                etag: String::new(),
            };
            let image = retrying(
                "update",
                false,
                None,
                rpc!(caller, update_image, request.clone()),
            )
            .await?
            .into_inner()
            .image;
            let image = image.context("the service returned no image")?;
            if cli.json {
                println!("{}", serde_json::to_string_pretty(&image_json(&image))?);
            } else {
                print_details(&image);
            }
            Ok(())
        }
        Command::Export {
            dir,
            owner,
            parallel,
            max_images,
        } => {
            let how = (parallel.max(1), max_images.max(1));
            export(&caller, &dir, owner, how, cli.json).await
        }
        Command::Watch { from, owner, count } => {
            watch(&caller, from, owner.unwrap_or_default(), count, cli.json).await
        }
        Command::Review { state, limit } => review(&caller, state, limit, cli.json).await,
        Command::Similar {
            id,
            hash,
            distance,
            limit,
        } => {
            use pb::find_similar_images_request::Query;
            let request = pb::FindSimilarImagesRequest {
                query: id.map(Query::ImageId).or(hash.map(Query::PdqHash)),
                max_distance: distance,
                page_size: limit.min(1000) as i32,
            };
            similar(&caller, request, cli.json).await
        }
        Command::Approve { id, reason, etag } => {
            let change = (id, pb::ImageState::Active, reason, etag);
            set_state(&caller, change, cli.json).await
        }
        Command::Quarantine { id, reason, etag } => {
            let change = (id, pb::ImageState::Quarantined, reason, etag);
            set_state(&caller, change, cli.json).await
        }
        Command::Remove { id, reason, etag } => {
            let change = (id, pb::ImageState::Removed, reason, etag);
            set_state(&caller, change, cli.json).await
        }
        Command::Delete { ids } => {
            for id in ids {
                retrying(
                    "delete",
                    false,
                    None,
                    rpc!(
                        caller,
                        delete_image,
                        pb::DeleteImageRequest {
                            image_id: id.clone(),
                        }
                    ),
                )
                .await?;
                if !cli.json {
                    println!("deleted {id}");
                }
            }
            Ok(())
        }
    }
}

async fn get(caller: &Caller, id: &str) -> Result<pb::Image, anyhow::Error> {
    retrying(
        "get",
        true,
        None,
        rpc!(
            caller,
            get_image,
            pb::GetImageRequest {
                image_id: id.to_owned(),
            }
        ),
    )
    .await?
    .into_inner()
    .image
    .context("the service returned no image")
}

/// Pages in a row that bring no image not seen before, after which a
/// listing is given up: a service whose pages never end.
const MAX_PAGES_WITHOUT_PROGRESS: usize = 20;

/// The images `imagectl export` lists at most by default (`--max-images`).
const DEFAULT_EXPORT_MAX_IMAGES: usize = 100_000;

/// Up to `limit` images of the listing `request`, each once, following its
/// pages. A listing that would never end is an error: a page token the
/// service sent before, or [`MAX_PAGES_WITHOUT_PROGRESS`] pages in a row
/// with no new image.
async fn list(
    caller: &Caller,
    mut request: pb::ListImagesRequest,
    limit: usize,
) -> anyhow::Result<Vec<pb::Image>> {
    use std::hash::{BuildHasher as _, RandomState};
    let mut images = Vec::new();
    let mut ids = std::collections::HashSet::new();
    // Hashes of the tokens: a service's tokens may be long.
    let (hasher, mut tokens) = (RandomState::new(), std::collections::HashSet::new());
    let mut idle = 0;
    loop {
        let page = retrying(
            "list",
            true,
            None,
            rpc!(caller, list_images, request.clone()),
        )
        .await?
        .into_inner();
        let before = images.len();
        for image in page.images {
            if ids.insert(image.image_id.clone()) {
                images.push(image);
            }
        }
        if page.next_page_token.is_empty() || images.len() >= limit {
            images.truncate(limit);
            return Ok(images);
        }
        if !tokens.insert(hasher.hash_one(&page.next_page_token)) {
            bail!(
                "the service sent the token of an earlier page again after {} images: its \
                 listing would never end; stopping",
                images.len()
            );
        }
        idle = if images.len() == before { idle + 1 } else { 0 };
        if idle >= MAX_PAGES_WITHOUT_PROGRESS {
            bail!(
                "the service sent {idle} pages in a row without an image not seen before, \
                 after {} images: its listing would never end; stopping",
                images.len()
            );
        }
        request.page_token = page.next_page_token;
    }
}

/// Uploads every file, `parallel` at a time, each with a progress bar.
async fn upload_all(
    caller: &Caller,
    files: Vec<PathBuf>,
    spec: pb::ImageSpec,
    parallel: usize,
    how: Delivery,
    json: bool,
) -> anyhow::Result<()> {
    let bars = MultiProgress::new();
    let results: Vec<(PathBuf, anyhow::Result<pb::Image>)> = futures::stream::iter(files)
        .map(|path| {
            let bar = bars.add(ProgressBar::new(0));
            let (caller, spec) = (caller.clone(), spec.clone());
            async move {
                let result = upload_one(&caller, &path, spec, &bar, how).await;
                bar.finish_and_clear();
                (path, result)
            }
        })
        .buffer_unordered(parallel)
        .collect()
        .await;
    let mut failed = 0;
    let mut uploaded = Vec::new();
    for (path, result) in results {
        match result {
            Ok(image) => {
                if !json {
                    // The service checked the bytes it received against the
                    // file's sha256; what it stores differs when it removed
                    // metadata, and that is worth saying.
                    let stripped =
                        if image.metadata_stripped && image.uploaded_sha256 != image.sha256 {
                            let file = std::fs::metadata(&path).map_or(0, |m| m.len()) as i64;
                            format!(
                                "  metadata removed ({} of the file's {}; pixels untouched)",
                                human_bytes(file - image.size_bytes),
                                human_bytes(file)
                            )
                        } else {
                            String::new()
                        };
                    println!(
                        "{}  {}  {}x{}  {}{stripped}",
                        image.image_id,
                        path.display(),
                        image.width,
                        image.height,
                        human_bytes(image.size_bytes)
                    );
                }
                uploaded.push(image_json(&image));
            }
            Err(error) => {
                failed += 1;
                let text = match error.downcast_ref::<Status>() {
                    Some(status) => explain(status),
                    None => format!("{error:#}"),
                };
                eprintln!("imagectl: {}: {text}", path.display());
            }
        }
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&uploaded)?);
    }
    if failed > 0 {
        bail!("{failed} of the uploads failed");
    }
    Ok(())
}

/// How an upload's bytes travel.
#[derive(Clone, Copy)]
enum Delivery {
    /// Streamed through the service, at most `limit_rate` bytes/s.
    Streamed { limit_rate: Option<u64> },
    /// Straight to the store through presigned URLs.
    Direct,
}

/// Part size of direct uploads.
const DIRECT_PART: u64 = 8 * 1024 * 1024;

/// How many times in a row an upload is retried without the service
/// holding more of it before imagectl gives up.
const ATTEMPTS_WITHOUT_PROGRESS: u32 = 6;

/// Errors after which an upload is worth resuming: the connection or the
/// service went away, another stream still held the session, or the
/// service was busy.
fn worth_resuming(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable
            | Code::DeadlineExceeded
            | Code::Aborted
            | Code::Cancelled
            | Code::Unknown
    ) || (status.code() == Code::ResourceExhausted && !is_final(status))
}

/// Exponential backoff with full jitter: 0.25 s, 0.5 s, … up to 8 s.
fn backoff(attempt: u32) -> Duration {
    let ceiling = Duration::from_millis(250) * 2u32.pow(attempt.min(5));
    ceiling.mul_f64(0.5 + rand::random::<f64>() / 2.0)
}

/// The SHA-256 of a file, read in chunks.
async fn file_sha256(path: &Path) -> anyhow::Result<String> {
    let sums = Checksums::of_file(path).await?;
    Ok(hex::encode(sums.sha256.finalize()))
}

/// An idempotency key naming this file with this metadata: running the
/// same upload again resumes its session (or returns its image) instead
/// of storing a copy.
fn upload_key(spec: &pb::ImageSpec) -> String {
    let mut hasher = Sha256::new();
    hasher.update(prost::Message::encode_to_vec(spec));
    format!("imagectl-{}", hex::encode(hasher.finalize()))
}

/// Uploads one file through an upload session: when the stream breaks
/// (a lost connection, a restarted service), it asks the service how much
/// it holds and resumes from there, with backoff.
async fn upload_one(
    caller: &Caller,
    path: &Path,
    mut spec: pb::ImageSpec,
    bar: &ProgressBar,
    how: Delivery,
) -> anyhow::Result<pb::Image> {
    let size = tokio::fs::metadata(path)
        .await
        .with_context(|| format!("opening {}", path.display()))?
        .len();
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    bar.set_length(size);
    bar.set_style(
        ProgressStyle::with_template("{msg:30!} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_message(name.clone());
    spec.filename = name.clone();
    spec.expected_size = Some(size as i64);
    // The service checks the bytes it receives against this (DATA_LOSS on
    // a mismatch); the stored bytes differ when it removed metadata.
    spec.sha256 = Some(file_sha256(path).await?);
    spec.idempotency_key = Some(upload_key(&spec));

    let mut client = caller.client.clone();
    let request = pb::StartUploadRequest {
        spec: Some(spec),
        expected_size: None,
    };
    // Safe to repeat: the idempotency key names the same session.
    let session = retrying(
        &name,
        true,
        Some(bar),
        rpc!(caller, start_upload, request.clone()),
    )
    .await?
    .into_inner()
    .session
    .context("the service returned no session")?;
    let upload_id = session.upload_id;
    let limit_rate = match how {
        Delivery::Direct => return send_direct(caller, path, &upload_id, size, bar).await,
        Delivery::Streamed { limit_rate } => limit_rate,
    };
    let (mut stuck, mut last_held, mut last_error) = (0u32, None, None::<Status>);
    loop {
        let query = pb::QueryUploadStatusRequest {
            upload_id: upload_id.clone(),
        };
        let status = match client.query_upload_status(caller.request(query)).await {
            Ok(status) => status.into_inner(),
            Err(error) if worth_resuming(&error) && stuck < ATTEMPTS_WITHOUT_PROGRESS => {
                stuck += 1;
                tokio::time::sleep(backoff(stuck)).await;
                continue;
            }
            // A refused upload's session is removed: its own error says why.
            Err(error) => return Err(last_error.unwrap_or(error).into()),
        };
        if let Some(image) = status.image {
            return Ok(image);
        }
        let held = status.persisted_size.max(0) as u64;
        if last_held.is_some_and(|before| held <= before) {
            stuck += 1;
        } else {
            stuck = 0;
        }
        if let Some(error) = &last_error {
            if stuck >= ATTEMPTS_WITHOUT_PROGRESS {
                return Err(error.clone().into());
            }
            bar.suspend(|| {
                eprintln!(
                    "imagectl: {name}: the upload stopped ({}); resuming at {held} of {size} bytes",
                    explain(error)
                )
            });
            tokio::time::sleep(backoff(stuck)).await;
        } else if held > 0 {
            bar.suspend(|| eprintln!("imagectl: {name}: resuming at {held} of {size} bytes"));
        }
        last_held = Some(held);
        bar.set_position(held);
        match send_from(caller, path, &upload_id, held, size, bar, limit_rate).await {
            Ok(image) => return Ok(image),
            Err(error) if worth_resuming(&error) => last_error = Some(error),
            Err(error) => return Err(error.into()),
        }
    }
}

/// A direct upload: the file's parts to their presigned URLs (each retried
/// with backoff), then `CompleteUpload`.
async fn send_direct(
    caller: &Caller,
    path: &Path,
    upload_id: &str,
    size: u64,
    bar: &ProgressBar,
) -> anyhow::Result<pb::Image> {
    let sizes: Vec<i64> = (0..size.div_ceil(DIRECT_PART))
        .map(|i| (size - i * DIRECT_PART).min(DIRECT_PART) as i64)
        .collect();
    let request = pb::GetUploadUrlsRequest {
        upload_id: upload_id.to_owned(),
        parts: Some(pb::get_upload_urls_request::Parts::PartSizes(
            pb::PartSizes {
                sizes: sizes.clone(),
            },
        )),
        expires_in: None,
    };
    let urls = retrying(
        "upload urls",
        true,
        Some(bar),
        rpc!(caller, get_upload_urls, request.clone()),
    )
    .await?
    .into_inner()
    .urls;
    let http = reqwest::Client::new();
    let mut file = tokio::fs::File::open(path)
        .await
        .with_context(|| format!("opening {}", path.display()))?;
    for (index, (url, part_size)) in urls.iter().zip(sizes).enumerate() {
        let mut part = vec![0u8; part_size as usize];
        file.read_exact(&mut part)
            .await
            .with_context(|| format!("reading {}", path.display()))?;
        let part = bytes::Bytes::from(part);
        let mut attempt = 0;
        loop {
            let sent = http.put(url).body(part.clone()).send().await;
            match sent {
                Ok(response) if response.status().is_success() => break,
                Ok(response) if response.status().is_client_error() => {
                    bail!("the store refused part {index}: {}", response.status())
                }
                failed if attempt + 1 >= ATTEMPTS_WITHOUT_PROGRESS => {
                    let why = match failed {
                        Ok(response) => response.status().to_string(),
                        Err(error) => error.to_string(),
                    };
                    bail!("part {index} could not be sent: {why}")
                }
                _ => {
                    attempt += 1;
                    tokio::time::sleep(backoff(attempt)).await;
                }
            }
        }
        bar.inc(part.len() as u64);
    }
    let request = pb::CompleteUploadRequest {
        upload_id: upload_id.to_owned(),
    };
    // Safe to repeat: completing a committed session returns its image.
    retrying(
        "complete upload",
        true,
        Some(bar),
        rpc!(caller, complete_upload, request.clone()),
    )
    .await?
    .into_inner()
    .image
    .context("the service returned no image")
}

/// One stream of an upload session: the file's bytes from `offset`.
async fn send_from(
    caller: &Caller,
    path: &Path,
    upload_id: &str,
    offset: u64,
    size: u64,
    bar: &ProgressBar,
    limit_rate: Option<u64>,
) -> Result<pb::Image, Status> {
    let mut file = tokio::fs::File::open(path)
        .await
        .map_err(|e| Status::failed_precondition(format!("reading the file: {e}")))?;
    tokio::io::AsyncSeekExt::seek(&mut file, std::io::SeekFrom::Start(offset))
        .await
        .map_err(|e| Status::failed_precondition(format!("reading the file: {e}")))?;
    // With a rate limit, chunks are small enough to pace smoothly.
    let chunk = limit_rate.map_or(CHUNK, |rate| {
        (rate / 10).clamp(16 * 1024, CHUNK as u64) as usize
    });
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let first = pb::UploadImageRequest {
        data: Some(pb::upload_image_request::Data::Resume(pb::ResumeUpload {
            upload_id: upload_id.to_owned(),
            write_offset: offset as i64,
        })),
        finish_write: offset >= size,
        ..Default::default()
    };
    tx.send(first).await.ok();
    let bar = bar.clone();
    let reader = tokio::spawn(async move {
        let started = tokio::time::Instant::now();
        let mut sent = offset;
        while sent < size {
            let mut buffer = vec![0u8; chunk];
            let n = read_full(&mut file, &mut buffer).await?;
            buffer.truncate(n);
            sent += n as u64;
            let message = pb::UploadImageRequest {
                chunk_crc32c: Some(crc32c::crc32c(&buffer)),
                data: Some(pb::upload_image_request::Data::Chunk(buffer.into())),
                finish_write: sent >= size || n == 0,
            };
            if tx.send(message).await.is_err() || n == 0 {
                break;
            }
            bar.set_position(sent);
            if let Some(rate) = limit_rate {
                let due = Duration::from_secs_f64((sent - offset) as f64 / rate.max(1) as f64);
                tokio::time::sleep_until(started + due).await;
            }
        }
        Ok::<_, std::io::Error>(())
    });
    let response = caller
        .client
        .clone()
        .upload_image(caller.request(tokio_stream::wrappers::ReceiverStream::new(rx)))
        .await;
    reader.abort();
    response?
        .into_inner()
        .image
        .ok_or_else(|| Status::internal("the service returned no image"))
}

async fn read_full(file: &mut tokio::fs::File, buffer: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buffer.len() {
        let n = file.read(&mut buffer[filled..]).await?;
        if n == 0 {
            break;
        }
        filled += n;
    }
    Ok(filled)
}

/// The file a download resumes into before it is renamed to `output`.
fn partial_path(output: &std::path::Path) -> PathBuf {
    let mut name = output.as_os_str().to_owned();
    name.push(".part");
    PathBuf::from(name)
}

/// A local file name from a name the server sent: its last component only,
/// never a path, a hidden file or a special name.
fn local_name(server_name: &str, id: &str) -> PathBuf {
    let last = server_name.rsplit(['/', '\\']).next().unwrap_or("");
    let cleaned: String = last.chars().filter(|c| !c.is_control()).collect();
    let cleaned = cleaned.trim().trim_start_matches('.');
    PathBuf::from(if cleaned.is_empty() { id } else { cleaned })
}

/// Appends what `request` downloads to `file`, each chunk shown to `seen`
/// and counted on `bar`: at most `remaining` bytes, what the image's size
/// leaves (a service that sends more is refused at the chunk that passes
/// it, so a file never grows past the image).
async fn download_to(
    caller: &Caller,
    request: pb::DownloadImageRequest,
    remaining: u64,
    file: &mut tokio::fs::File,
    bar: &ProgressBar,
    mut seen: impl FnMut(&[u8]),
) -> anyhow::Result<()> {
    let mut stream = retrying(
        "download",
        true,
        Some(bar),
        rpc!(caller, download_image, request.clone()),
    )
    .await?
    .into_inner();
    stream
        .message()
        .await?
        .context("the service sent no header")?;
    let mut written: u64 = 0;
    while let Some(message) = stream.message().await? {
        written += message.chunk.len() as u64;
        anyhow::ensure!(
            written <= remaining,
            "the service sent more bytes than the image holds ({remaining} left to read); \
             nothing more is written"
        );
        file.write_all(&message.chunk).await?;
        seen(&message.chunk);
        bar.inc(message.chunk.len() as u64);
    }
    Ok(())
}

/// Downloads into `OUTPUT.part` (continuing from its end when it exists),
/// then renames it to OUTPUT: a file this command did not create is never
/// written to.
async fn download(
    caller: &Caller,
    id: &str,
    target: (Option<PathBuf>, bool),
    variant: String,
    json: bool,
) -> anyhow::Result<()> {
    let (output, force) = target;
    let image = get(caller, id).await?;
    let output = output.unwrap_or_else(|| local_name(&image.filename, id));
    if !force && tokio::fs::symlink_metadata(&output).await.is_ok() {
        bail!(
            "{} exists; choose another file with -o, or pass --force to replace it",
            output.display()
        );
    }
    let partial = partial_path(&output);
    let have = tokio::fs::symlink_metadata(&partial)
        .await
        .map(|m| if m.is_file() { m.len() } else { 0 })
        .unwrap_or(0);
    let total = if variant.is_empty() || variant == "original" {
        image.size_bytes as u64
    } else {
        image
            .variants
            .iter()
            .find(|v| v.name == variant)
            .map(|v| v.size_bytes as u64)
            .context("no such variant")?
    };
    if have > total {
        bail!(
            "{} is larger than the image: not a partial download of it; remove it",
            partial.display()
        );
    }
    let mut file = tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&partial)
        .await?;
    let bar = ProgressBar::new(total).with_position(have);
    bar.set_style(
        ProgressStyle::with_template("[{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    if have < total {
        let request = pb::DownloadImageRequest {
            image_id: id.to_owned(),
            variant,
            // No preference, so a resumed download reads the same object.
            accept: Vec::new(),
            read_offset: have as i64,
            read_limit: 0,
            object: String::new(),
        };
        download_to(caller, request, total - have, &mut file, &bar, |_| {}).await?;
        file.flush().await?;
    }
    bar.finish_and_clear();
    drop(file);
    if total == image.size_bytes as u64 && image.size_bytes > 0 {
        let bytes = tokio::fs::read(&partial).await?;
        if hex::encode(Sha256::digest(&bytes)) != image.sha256 {
            let _ = tokio::fs::remove_file(&partial).await;
            bail!(
                "the download does not match the image's sha256 (a partial file from another image?); removed {}",
                partial.display()
            );
        }
    }
    tokio::fs::rename(&partial, &output)
        .await
        .with_context(|| format!("renaming {} to {}", partial.display(), output.display()))?;
    if json {
        println!(
            "{}",
            serde_json::json!({ "image_id": id, "file": output, "bytes": total, "resumed_from": have })
        );
    } else if have > 0 {
        println!(
            "{} ({}, resumed from {})",
            output.display(),
            human_bytes(total as i64),
            human_bytes(have as i64)
        );
    } else {
        println!("{} ({})", output.display(), human_bytes(total as i64));
    }
    Ok(())
}

/// What happened to one image of an export.
enum Exported {
    /// Downloaded, continuing a partial file of this many bytes.
    Fetched { resumed: u64 },
    /// Already in the directory, and verified.
    Kept,
}

/// `imagectl export`: every image of `owner` (default: the caller) into
/// `dir`, `parallel` at a time, then the manifest. Ctrl-C stops at once:
/// every file under its final name is whole, and the `.part` files are
/// continued by the next run.
async fn export(
    caller: &Caller,
    dir: &Path,
    owner: Option<String>,
    (parallel, max_images): (usize, usize),
    json: bool,
) -> anyhow::Result<()> {
    let owner = match owner {
        Some(owner) => owner,
        // The caller's id as the service knows it (a token's subject).
        None => {
            retrying(
                "usage",
                true,
                None,
                rpc!(caller, get_usage, pb::GetUsageRequest::default()),
            )
            .await?
            .into_inner()
            .usage
            .context("the service returned no usage")?
            .user_id
        }
    };
    tokio::fs::create_dir_all(dir)
        .await
        .with_context(|| format!("creating {}", dir.display()))?;
    let request = pb::ListImagesRequest {
        owner_id: owner.clone(),
        page_size: 1000,
        ..Default::default()
    };
    // Each once, should a page walk meet one twice; one more than the
    // bound tells whether the owner holds more.
    let images = list(caller, request, max_images.saturating_add(1)).await?;
    if images.len() > max_images {
        bail!(
            "{} holds more than {max_images} images (--max-images): nothing was exported; \
             raise --max-images to export them all",
            printable(&owner)
        );
    }
    let total = images.iter().map(|i| i.size_bytes.max(0) as u64).sum();
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template(
            "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    let done = std::sync::atomic::AtomicUsize::new(0);
    bar.set_message(format!("0/{} images", images.len()));
    let work = futures::stream::iter(&images)
        .map(|image| {
            let (bar, done, count) = (&bar, &done, images.len());
            async move {
                let result = export_one(caller, dir, image, bar).await;
                let done = done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                bar.set_message(format!("{done}/{count} images"));
                if !json {
                    bar.suspend(|| export_line(image, &result));
                }
                (image, result)
            }
        })
        .buffer_unordered(parallel)
        .collect::<Vec<_>>();
    let results = tokio::select! {
        results = work => results,
        _ = tokio::signal::ctrl_c() => {
            bar.abandon();
            bail!(
                "interrupted: the files under their final names in {} are whole and verified; \
                 run the same command again to resume",
                dir.display()
            );
        }
    };
    bar.finish_and_clear();
    let (mut fetched, mut kept) = (0, 0);
    let mut ended = std::collections::HashSet::new();
    for (image, result) in results {
        match result {
            Ok(Exported::Fetched { .. }) => fetched += 1,
            Ok(Exported::Kept) => kept += 1,
            Err(_) => continue,
        }
        ended.insert(image.image_id.as_str());
    }
    let failed = images.len() - ended.len();
    // In the listing's order (newest first), whatever order the downloads
    // ended in.
    let exported: Vec<&pb::Image> = images
        .iter()
        .filter(|image| ended.contains(image.image_id.as_str()))
        .collect();
    let manifest = serde_json::json!({
        "owner_id": owner,
        "exported_at": humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        "complete": failed == 0,
        "images": exported.iter().map(|image| {
            let (original, record) = export_names(image).unwrap_or_default();
            serde_json::json!({
                "image_id": image.image_id,
                "original": original,
                "record": record,
                "content_type": image.content_type,
                "size_bytes": image.size_bytes,
                "sha256": image.sha256,
                "crc32c": image.crc32c,
            })
        }).collect::<Vec<_>>(),
    });
    write_replacing(
        &dir.join(EXPORT_MANIFEST),
        &serde_json::to_vec_pretty(&manifest)?,
    )
    .await?;
    if json {
        println!(
            "{}",
            serde_json::json!({
                "owner_id": owner,
                "dir": dir,
                "images": images.len(),
                "fetched": fetched,
                "kept": kept,
                "failed": failed,
            })
        );
    } else {
        println!(
            "{} of {} images of {} in {} ({fetched} downloaded, {kept} already there); list in {}",
            fetched + kept,
            images.len(),
            printable(&owner),
            dir.display(),
            EXPORT_MANIFEST
        );
    }
    if failed > 0 {
        bail!("{failed} of the {} images failed to export", images.len());
    }
    Ok(())
}

/// The manifest an export writes last: the images exported with their
/// files and checksums.
const EXPORT_MANIFEST: &str = "export.json";

/// The line an export prints for each image (above the progress bar).
fn export_line(image: &pb::Image, result: &anyhow::Result<Exported>) {
    let file = export_names(image)
        .map(|(original, _)| original)
        .unwrap_or_default();
    let size = human_bytes(image.size_bytes);
    match result {
        Ok(Exported::Fetched { resumed: 0 }) => println!("exported {file} ({size})"),
        Ok(Exported::Fetched { resumed }) => println!(
            "exported {file} ({size}, resumed from {})",
            human_bytes(*resumed as i64)
        ),
        Ok(Exported::Kept) => println!("verified {file} ({size}, already exported)"),
        Err(error) => eprintln!("imagectl: {error:#}"),
    }
}

/// The files an image is exported to: its original, named by its id and
/// an extension from its media type, and its record. The id comes from the
/// service, so it must be a UUID's characters before it names a file.
fn export_names(image: &pb::Image) -> anyhow::Result<(String, String)> {
    let id = &image.image_id;
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-') {
        bail!(
            "the service sent an image id that cannot name a file: {}",
            printable(id)
        );
    }
    let extension = match image.content_type.strip_prefix("image/").unwrap_or("") {
        "jpeg" => "jpg",
        subtype if !subtype.is_empty() && subtype.bytes().all(|b| b.is_ascii_alphanumeric()) => {
            subtype
        }
        _ => "bin",
    };
    Ok((format!("{id}.{extension}"), format!("{id}.json")))
}

/// Exports one image: its record, then its original unless the file is
/// there and verifies. A download that does not match the record is
/// removed; one that continued a partial file is tried once more from the
/// start (the partial file may not have been this image's).
async fn export_one(
    caller: &Caller,
    dir: &Path,
    image: &pb::Image,
    bar: &ProgressBar,
) -> anyhow::Result<Exported> {
    let id = &image.image_id;
    let (original, record) = export_names(image)?;
    write_replacing(
        &dir.join(record),
        &serde_json::to_vec_pretty(&image_json(image))?,
    )
    .await?;
    let path = dir.join(original);
    let size = image.size_bytes.max(0) as u64;
    if let Ok(metadata) = tokio::fs::symlink_metadata(&path).await {
        if !metadata.is_file() {
            bail!("image {id}: {} is not a file; remove it", path.display());
        }
        // Anything else there (damaged, another image's) is replaced below.
        if Checksums::of_file(&path).await?.mismatch(image).is_none() {
            bar.inc(size);
            return Ok(Exported::Kept);
        }
    }
    let partial = partial_path(&path);
    let mut resumed = match tokio::fs::symlink_metadata(&partial).await {
        Ok(metadata) if !metadata.is_file() => {
            bail!("image {id}: {} is not a file; remove it", partial.display())
        }
        // Longer than the image: not a beginning of it.
        Ok(metadata) if metadata.len() <= size => metadata.len(),
        _ => 0,
    };
    loop {
        let fetched = match fetch_original(caller, image, &partial, resumed, bar).await {
            Ok(fetched) => fetched,
            Err(error) => {
                // Damaged bytes are not worth continuing; anything else
                // (a broken connection) leaves the partial file to resume.
                if error
                    .downcast_ref::<Status>()
                    .is_some_and(|status| status.code() == Code::DataLoss)
                {
                    let _ = tokio::fs::remove_file(&partial).await;
                }
                let error = match error.downcast::<Status>() {
                    Ok(status) => anyhow::anyhow!(explain(&status)),
                    Err(error) => error,
                };
                return Err(error.context(format!("image {id}")));
            }
        };
        match fetched {
            None => break,
            Some(_) if resumed > 0 => resumed = 0,
            Some(mismatch) => {
                let _ = tokio::fs::remove_file(&partial).await;
                bail!(
                    "image {id}: the downloaded original does not match its record ({mismatch}); not kept"
                );
            }
        }
    }
    tokio::fs::rename(&partial, &path)
        .await
        .with_context(|| format!("renaming {} to {}", partial.display(), path.display()))?;
    Ok(Exported::Fetched { resumed })
}

/// Downloads the original of `image` into `partial` from `offset` (the
/// bytes before it are those already in the file) and says how the whole
/// file differs from the record, if it does. The file is on disk when this
/// returns.
async fn fetch_original(
    caller: &Caller,
    image: &pb::Image,
    partial: &Path,
    offset: u64,
    bar: &ProgressBar,
) -> anyhow::Result<Option<String>> {
    let (mut sums, mut file) = if offset > 0 {
        let sums = Checksums::of_file(partial).await?;
        let file = tokio::fs::OpenOptions::new()
            .append(true)
            .open(partial)
            .await?;
        (sums, file)
    } else {
        let file = tokio::fs::File::create(partial)
            .await
            .with_context(|| format!("creating {}", partial.display()))?;
        (Checksums::default(), file)
    };
    bar.inc(sums.len);
    if sums.len < image.size_bytes.max(0) as u64 {
        let request = pb::DownloadImageRequest {
            image_id: image.image_id.clone(),
            variant: "original".to_owned(),
            accept: Vec::new(),
            read_offset: sums.len as i64,
            read_limit: 0,
            object: String::new(),
        };
        let remaining = image.size_bytes.max(0) as u64 - sums.len;
        download_to(caller, request, remaining, &mut file, bar, |chunk| {
            sums.update(chunk)
        })
        .await?;
    }
    file.flush().await?;
    file.sync_all().await?;
    Ok(sums.mismatch(image))
}

/// Writes `bytes` to `path` through a temporary file renamed over it, so
/// that `path` is never half written; a file that already holds them is
/// left alone.
async fn write_replacing(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    if tokio::fs::read(path).await.is_ok_and(|old| old == bytes) {
        return Ok(());
    }
    let temporary = partial_path(path);
    let mut file = tokio::fs::File::create(&temporary)
        .await
        .with_context(|| format!("creating {}", temporary.display()))?;
    file.write_all(bytes).await?;
    file.sync_all().await?;
    drop(file);
    tokio::fs::rename(&temporary, path)
        .await
        .with_context(|| format!("renaming {} to {}", temporary.display(), path.display()))
}

/// The length, SHA-256 and CRC32C of bytes read in order.
#[derive(Default)]
struct Checksums {
    len: u64,
    sha256: Sha256,
    crc32c: u32,
}

impl Checksums {
    fn update(&mut self, bytes: &[u8]) {
        self.len += bytes.len() as u64;
        self.sha256.update(bytes);
        self.crc32c = crc32c::crc32c_append(self.crc32c, bytes);
    }

    async fn of_file(path: &Path) -> anyhow::Result<Self> {
        let mut file = tokio::fs::File::open(path)
            .await
            .with_context(|| format!("opening {}", path.display()))?;
        let mut sums = Self::default();
        let mut buffer = vec![0u8; CHUNK];
        loop {
            let n = file.read(&mut buffer).await?;
            if n == 0 {
                return Ok(sums);
            }
            sums.update(&buffer[..n]);
        }
    }

    /// How the bytes differ from the image's original as its record
    /// describes it; `None` when they are the same.
    fn mismatch(self, image: &pb::Image) -> Option<String> {
        if self.len != image.size_bytes.max(0) as u64 {
            return Some(format!(
                "{} bytes where the record says {}",
                self.len, image.size_bytes
            ));
        }
        let sha256 = hex::encode(self.sha256.finalize());
        if sha256 != image.sha256 {
            return Some(format!(
                "SHA-256 {sha256} where the record says {}",
                image.sha256
            ));
        }
        (self.crc32c != image.crc32c).then(|| {
            format!(
                "CRC32C {:08x} where the record says {:08x}",
                self.crc32c, image.crc32c
            )
        })
    }
}

fn format_time(time: prost_types::Timestamp) -> String {
    let system =
        std::time::UNIX_EPOCH + Duration::new(time.seconds.max(0) as u64, time.nanos.max(0) as u32);
    humantime::format_rfc3339_seconds(system).to_string()
}

fn human_bytes(bytes: i64) -> String {
    bytesize::ByteSize::b(bytes.max(0) as u64)
        .display()
        .iec()
        .to_string()
}

/// Times a watch is opened again in a row without an event before
/// imagectl gives up.
const WATCH_ATTEMPTS: u32 = 6;

/// `imagectl watch`: events printed as they come; a stream ended with a
/// resume cursor is opened again from it.
async fn watch(
    caller: &Caller,
    from: String,
    owner_id: String,
    count: Option<u64>,
    json: bool,
) -> anyhow::Result<()> {
    let mut cursor = from;
    let mut printed = 0u64;
    let mut failures = 0u32;
    let result = loop {
        if count.is_some_and(|count| printed >= count) {
            break Ok(());
        }
        let request = caller.request(pb::WatchImageEventsRequest {
            cursor: cursor.clone(),
            owner_id: owner_id.clone(),
            types: Vec::new(),
        });
        let mut stream = match caller.client.clone().watch_image_events(request).await {
            Ok(response) => response.into_inner(),
            Err(status) => break Err(status),
        };
        let ended = loop {
            if count.is_some_and(|count| printed >= count) {
                break None;
            }
            match stream.message().await {
                Ok(Some(message)) => {
                    let Some(event) = message.event else { continue };
                    print_event(&event, json)?;
                    cursor = event.cursor;
                    printed += 1;
                    failures = 0;
                }
                Ok(None) => break None,
                Err(status) => break Some(status),
            }
        };
        let Some(status) = ended else {
            if count.is_some_and(|count| printed >= count) {
                break Ok(());
            }
            continue;
        };
        let resume = status
            .metadata()
            .get(image_service::grpc::RESUME_CURSOR)
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned);
        match resume {
            Some(resume)
                if matches!(status.code(), Code::Unavailable | Code::ResourceExhausted)
                    && failures < WATCH_ATTEMPTS =>
            {
                failures += 1;
                eprintln!("imagectl: {}; watching again", explain(&status));
                // The cursor of the last event printed, or where the
                // service says this stream stood.
                cursor = resume;
                tokio::time::sleep(backoff(failures)).await;
            }
            _ => break Err(status),
        }
    };
    if !cursor.is_empty() {
        eprintln!("imagectl: resume with: imagectl watch --from {cursor}");
    }
    result.map_err(anyhow::Error::from)
}

fn event_type_name(event: &pb::ImageEvent) -> &'static str {
    match event.r#type() {
        pb::ImageEventType::Created => "created",
        pb::ImageEventType::Updated => "updated",
        pb::ImageEventType::VariantsAdded => "variants_added",
        pb::ImageEventType::Deleted => "deleted",
        pb::ImageEventType::StateChanged => "state_changed",
        pb::ImageEventType::Purged => "purged",
        pb::ImageEventType::Unspecified => "unknown",
    }
}

fn print_event(event: &pb::ImageEvent, json: bool) -> anyhow::Result<()> {
    let time = event.time.map(format_time).unwrap_or_default();
    if json {
        let line = serde_json::json!({
            "cursor": event.cursor,
            "type": event_type_name(event),
            "image_id": event.image_id,
            "owner_id": event.owner_id,
            "time": time,
            "etag": event.etag,
            "image": event.image.as_ref().map(image_json),
            "object_keys": event.object_keys,
        });
        println!("{}", serde_json::to_string(&line)?);
    } else {
        println!(
            "{time}  {:<14} {}  owner {}  {}  cursor {}",
            event_type_name(event),
            event.image_id,
            printable(&event.owner_id),
            event.etag,
            event.cursor
        );
    }
    Ok(())
}

/// The name of a moderation state, as `--state` takes it.
fn state_name(state: pb::ImageState) -> &'static str {
    match state {
        pb::ImageState::Active | pb::ImageState::Unspecified => "active",
        pb::ImageState::Pending => "pending",
        pb::ImageState::Quarantined => "quarantined",
        pb::ImageState::Removed => "removed",
    }
}

fn parse_state(text: &str) -> Result<pb::ImageState, String> {
    match text {
        "pending" => Ok(pb::ImageState::Pending),
        "quarantined" => Ok(pb::ImageState::Quarantined),
        "removed" => Ok(pb::ImageState::Removed),
        _ => Err("expected pending, quarantined or removed".into()),
    }
}

/// Sets an image's state (a moderator's `approve`, `quarantine`, `remove`)
/// and prints the image as it is now.
async fn set_state(
    caller: &Caller,
    change: (String, pb::ImageState, String, Option<String>),
    json: bool,
) -> anyhow::Result<()> {
    let (image_id, state, reason, etag) = change;
    let request = pb::SetImageStateRequest {
        image_id,
        state: state as i32,
        reason,
        etag: etag.unwrap_or_default(),
    };
    let mut client = caller.moderation.clone();
    let image = client
        .set_image_state(caller.request(request))
        .await?
        .into_inner()
        .image
        .context("the service returned no image")?;
    if json {
        println!("{}", serde_json::to_string_pretty(&image_json(&image))?);
    } else {
        print_details(&image);
    }
    Ok(())
}

/// Prints the images in `state`, those in it longest first, up to `limit`.
async fn review(
    caller: &Caller,
    state: pb::ImageState,
    limit: usize,
    json: bool,
) -> anyhow::Result<()> {
    let mut client = caller.moderation.clone();
    let mut images = Vec::new();
    let mut page_token = String::new();
    while images.len() < limit {
        let request = pb::ListImagesForReviewRequest {
            state: state as i32,
            page_size: (limit - images.len()).min(1000) as i32,
            page_token,
        };
        let page = client
            .list_images_for_review(caller.request(request))
            .await?
            .into_inner();
        images.extend(page.images);
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    images.truncate(limit);
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&images.iter().map(image_json).collect::<Vec<_>>())?
        );
    } else {
        for image in &images {
            println!(
                "{}  {}  {:<11} {:<16} owner {}  {}",
                image.state_time.map(format_time).unwrap_or_default(),
                image.image_id,
                state_name(image.state()),
                printable(&image.state_reason),
                printable(&image.owner_id),
                image.etag,
            );
        }
    }
    Ok(())
}

/// Prints the images a search for similar ones finds, nearest first.
async fn similar(
    caller: &Caller,
    request: pb::FindSimilarImagesRequest,
    json: bool,
) -> anyhow::Result<()> {
    let response = caller
        .moderation
        .clone()
        .find_similar_images(caller.request(request))
        .await?
        .into_inner();
    if response.candidates_truncated {
        eprintln!(
            "warning: the search was cut short (a bucket of the similar-image index holds more \
             entries than --max-similar-candidates lets one search read): matches may be missing"
        );
    }
    let found = response.images;
    if json {
        let found: Vec<_> = found
            .iter()
            .map(|f| {
                let image = f.image.as_ref().map(image_json);
                serde_json::json!({"distance": f.distance, "image": image})
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&found)?);
        return Ok(());
    }
    if found.is_empty() {
        println!("no similar images");
    }
    for f in &found {
        let Some(image) = &f.image else { continue };
        println!(
            "{:>3}  {}  {:<11} owner {}  {}",
            f.distance,
            image.image_id,
            state_name(image.state()),
            printable(&image.owner_id),
            printable(&image.filename),
        );
    }
    Ok(())
}

fn image_json(image: &pb::Image) -> serde_json::Value {
    serde_json::json!({
        "image_id": image.image_id,
        "owner_id": image.owner_id,
        "filename": image.filename,
        "content_type": image.content_type,
        "size_bytes": image.size_bytes,
        "sha256": image.sha256,
        "uploaded_sha256": image.uploaded_sha256,
        "metadata_stripped": image.metadata_stripped,
        "width": image.width,
        "height": image.height,
        "title": image.title,
        "description": image.description,
        "tags": image.tags,
        "location": image.location,
        "attributes": image.attributes,
        "create_time": image.create_time.map(format_time),
        "update_time": image.update_time.map(format_time),
        "etag": image.etag,
        "crc32c": image.crc32c,
        "blurhash": image.blurhash,
        "thumbhash": image.thumbhash,
        "state": state_name(image.state()),
        "state_reason": image.state_reason,
        "state_time": image.state_time.map(format_time),
        "pdq_hash": image.pdq_hash,
        "pdq_quality": image.pdq_quality,
        "variants": image.variants.iter().map(|v| serde_json::json!({
            "name": v.name,
            "content_type": v.content_type,
            "size_bytes": v.size_bytes,
            "width": v.width,
            "height": v.height,
        })).collect::<Vec<_>>(),
    })
}

/// Text from the service made safe for a terminal: control characters
/// and bidirectional overrides are shown escaped, never interpreted.
fn printable(text: &str) -> String {
    text.chars()
        .map(|c| {
            let bidi = matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{200E}' | '\u{200F}');
            if c.is_control() || bidi {
                c.escape_unicode().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

fn print_table(images: &[pb::Image]) {
    if images.is_empty() {
        println!("no images");
        return;
    }
    println!(
        "{:<36}  {:<12}  {:<20}  {:>9}  {:>11}  {:<10}  TITLE",
        "ID", "OWNER", "CREATED", "SIZE", "PIXELS", "TYPE"
    );
    for image in images {
        println!(
            "{:<36}  {:<12}  {:<20}  {:>9}  {:>11}  {:<10}  {}",
            image.image_id,
            truncate(&image.owner_id, 12),
            image.create_time.map(format_time).unwrap_or_default(),
            human_bytes(image.size_bytes),
            format!("{}x{}", image.width, image.height),
            image.content_type.trim_start_matches("image/"),
            truncate(&image.title, 40),
        );
    }
}

fn print_details(image: &pb::Image) {
    let stripped = if image.metadata_stripped {
        "yes: identifying metadata (GPS, serial numbers, …) was removed"
    } else {
        "no: stored as uploaded"
    };
    let mut rows = vec![
        ("id", image.image_id.clone()),
        ("owner", image.owner_id.clone()),
        ("file", printable(&image.filename)),
        ("type", image.content_type.clone()),
        (
            "size",
            format!(
                "{} ({} bytes)",
                human_bytes(image.size_bytes),
                image.size_bytes
            ),
        ),
        ("pixels", format!("{}x{}", image.width, image.height)),
        ("sha256", image.sha256.clone()),
    ];
    if image.state() != pb::ImageState::Active {
        rows.push((
            "state",
            format!(
                "{} ({})",
                state_name(image.state()),
                printable(&image.state_reason)
            ),
        ));
    }
    if !image.uploaded_sha256.is_empty() && image.uploaded_sha256 != image.sha256 {
        rows.push(("uploaded", format!("sha256 {}", image.uploaded_sha256)));
    }
    rows.extend([
        ("crc32c", format!("{:08x}", image.crc32c)),
        ("stripped", stripped.to_owned()),
        ("title", printable(&image.title)),
        ("description", printable(&image.description)),
        (
            "tags",
            image
                .tags
                .iter()
                .map(|t| printable(t))
                .collect::<Vec<_>>()
                .join(", "),
        ),
        ("location", printable(&image.location)),
        (
            "created",
            image.create_time.map(format_time).unwrap_or_default(),
        ),
        (
            "updated",
            image.update_time.map(format_time).unwrap_or_default(),
        ),
        ("etag", image.etag.clone()),
        ("blurhash", image.blurhash.clone()),
        ("thumbhash", image.thumbhash.clone()),
        ("pdq", pdq_row(image)),
    ]);
    for (name, value) in rows {
        println!("{name:<12} {value}");
    }
    for variant in &image.variants {
        println!(
            "{:<12} {:<8} {}x{}  {}  {}",
            "variant",
            variant.name,
            variant.width,
            variant.height,
            human_bytes(variant.size_bytes),
            variant.content_type
        );
    }
    let mut attributes: Vec<_> = image.attributes.iter().collect();
    attributes.sort();
    for (key, value) in attributes {
        println!(
            "{:<12} {}={}",
            "attribute",
            printable(key),
            printable(value)
        );
    }
}

fn truncate(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        text.to_owned()
    } else {
        text.chars()
            .take(max - 1)
            .chain(std::iter::once('…'))
            .collect()
    }
}

/// The PDQ hash with its quality, or nothing when the image has none (not
/// decoded, or not the caller's to see).
fn pdq_row(image: &pb::Image) -> String {
    if image.pdq_hash.is_empty() {
        String::new()
    } else {
        format!("{} (quality {})", image.pdq_hash, image.pdq_quality)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_from_the_service_cannot_drive_the_terminal() {
        assert_eq!(printable("beach"), "beach");
        assert_eq!(printable("été"), "été");
        assert_eq!(printable("a\u{1b}[31mred"), "a\\u{1b}[31mred");
        assert_eq!(printable("x\u{202e}y"), "x\\u{202e}y");
        assert_eq!(printable("line\nbreak"), "line\\u{a}break");
    }
}
