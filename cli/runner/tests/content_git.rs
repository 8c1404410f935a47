//! `content.git`: the runner binary checks a repository out before the steps, from bare
//! repositories made here with the `git` program, and reports what goes wrong as an errored
//! shard naming the url, revision or path.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use anyhow::{Context as _, Result, bail};
use assay_bus::{Bus, NatsOptions, streams, subjects};
use assay_proto::{GitCheckout, ShardJob, ShardState, ShardStatus, Step};
use assay_testkit::NatsServer;
use base64::Engine as _;
use prost::Message;
use tokio_util::sync::CancellationToken;

/// A bare repository with history: `main` (two commits), an annotated tag `v1` on the first,
/// and a branch `feature` off the first.
struct Repo {
    _dir: tempfile::TempDir,
    bare: PathBuf,
    /// main's first commit (tagged v1), main's head, feature's head.
    first: String,
    main: String,
    feature: String,
    /// A commit only `refs/pull/1/head` reaches.
    pull: String,
}

fn git(dir: &Path, args: &[&str]) -> Result<String> {
    let out = Command::new("git")
        .current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .args([
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@example.com",
            "-c",
            "init.defaultBranch=main",
        ])
        .args(args)
        .output()
        .context("run git (is it installed?)")?;
    if !out.status.success() {
        bail!("git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8(out.stdout)?.trim().to_string())
}

fn write(path: &Path, text: &str) -> Result<()> {
    std::fs::create_dir_all(path.parent().context("parent")?)?;
    std::fs::write(path, text)?;
    Ok(())
}

fn repo() -> Result<Repo> {
    let dir = tempfile::tempdir()?;
    let work = dir.path().join("work");
    std::fs::create_dir(&work)?;
    git(&work, &["init", "-q"])?;
    write(&work.join("README"), "one\n")?;
    write(&work.join("tests/run.sh"), "#!/bin/sh\necho ran\n")?;
    write(&work.join("tests/data/x.txt"), "x\n")?;
    write(&work.join("docs/guide.md"), "guide\n")?;
    std::os::unix::fs::symlink("README", work.join("readme-link"))?;
    git(&work, &["add", "-A"])?;
    git(&work, &["update-index", "--chmod=+x", "tests/run.sh"])?;
    git(&work, &["commit", "-q", "-m", "one"])?;
    let first = git(&work, &["rev-parse", "HEAD"])?;
    git(&work, &["tag", "-a", "v1", "-m", "release 1"])?;
    git(&work, &["checkout", "-q", "-b", "feature"])?;
    write(&work.join("feature.txt"), "feature\n")?;
    git(&work, &["add", "-A"])?;
    git(&work, &["commit", "-q", "-m", "feature"])?;
    let feature = git(&work, &["rev-parse", "HEAD"])?;
    git(&work, &["checkout", "-q", "main"])?;
    write(&work.join("README"), "two\n")?;
    git(&work, &["commit", "-q", "-am", "two"])?;
    let main = git(&work, &["rev-parse", "HEAD"])?;
    git(dir.path(), &["clone", "-q", "--bare", "work", "repo.git"])?;
    // A pull request's head: a commit only refs/pull/1/head reaches.
    git(&work, &["checkout", "-q", "-b", "pr", &first])?;
    write(&work.join("pr.txt"), "pr\n")?;
    git(&work, &["add", "-A"])?;
    git(&work, &["commit", "-q", "-m", "pr"])?;
    let pull = git(&work, &["rev-parse", "HEAD"])?;
    git(
        &work,
        &["push", "-q", "../repo.git", "HEAD:refs/pull/1/head"],
    )?;
    git(&work, &["checkout", "-q", "main"])?;
    Ok(Repo {
        pull,
        bare: dir.path().join("repo.git"),
        _dir: dir,
        first,
        main,
        feature,
    })
}

async fn bus(server: &NatsServer) -> Result<Bus> {
    let opts = NatsOptions {
        url: server.url(),
        ..NatsOptions::default()
    };
    let bus = Bus::connect(&opts, &CancellationToken::new()).await?;
    bus.ensure_topology().await?;
    Ok(bus)
}

/// A job checking `url` out at `revision` whose one step records the working directory's
/// files (`find`, with file types) and its environment into `out`.
fn shard_job(execution: &str, url: &str, revision: &str, paths: &[&str], out: &Path) -> ShardJob {
    let out = out.display();
    ShardJob {
        header: Some(assay_bus::header("test", format!("{execution}/0/1"), None)),
        execution_id: execution.to_string(),
        workflow: "wf".to_string(),
        shard_count: 1,
        attempt: 1,
        git: Some(GitCheckout {
            url: url.to_string(),
            revision: revision.to_string(),
            paths: paths.iter().map(|p| p.to_string()).collect(),
            ..GitCheckout::default()
        }),
        steps: vec![Step {
            name: "look".into(),
            run: format!(
                "find . -mindepth 1 \\( -type l -printf 'l %p\\n' \\) -o \\( -type d -printf 'd %p\\n' \\) -o \\( -perm -u+x -printf 'x %p\\n' \\) -o -printf 'f %p\\n' | sort > {out}/files; \
                 cat README > {out}/readme 2>/dev/null; env > {out}/env"
            ),
            ..Step::default()
        }],
        ..ShardJob::default()
    }
}

async fn run(job: &ShardJob, server: &NatsServer, env: &[(&str, &str)]) -> Result<Output> {
    let b64 = base64::engine::general_purpose::STANDARD.encode(job.encode_to_vec());
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_assay-runner"));
    cmd.env("ASSAY_SHARD_JOB", b64)
        .env("ASSAY_NATS_URL", server.url());
    for (k, v) in env {
        cmd.env(k, v);
    }
    Ok(cmd.output().await?)
}

/// The final status of `execution`'s shard 0.
async fn final_status(bus: &Bus, execution: &str) -> Result<ShardStatus> {
    let subject = subjects::shard_status(execution, 0);
    let mut s = bus.jetstream().get_stream(streams::STATUS).await?;
    let state = s.info().await?.state.clone();
    for seq in (state.first_sequence..=state.last_sequence).rev() {
        let Ok(msg) = s.get_raw_message(seq).await else {
            continue;
        };
        if msg.subject.as_str() == subject {
            let status = ShardStatus::decode(msg.payload)?;
            if status.state() != ShardState::Running {
                return Ok(status);
            }
        }
    }
    bail!("no final status for {execution}")
}

fn read(dir: &Path, name: &str) -> String {
    std::fs::read_to_string(dir.join(name)).unwrap_or_default()
}

fn env_of(dir: &Path) -> BTreeMap<String, String> {
    read(dir, "env")
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Runs a checkout of `revision` that must pass; returns (files listing, README, env).
async fn passes(
    server: &NatsServer,
    execution: &str,
    url: &str,
    revision: &str,
    paths: &[&str],
) -> Result<(String, String, BTreeMap<String, String>)> {
    let out = tempfile::tempdir()?;
    let job = shard_job(execution, url, revision, paths, out.path());
    let o = run(&job, server, &[]).await?;
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{execution}: {stderr}");
    Ok((
        read(out.path(), "files"),
        read(out.path(), "readme"),
        env_of(out.path()),
    ))
}

const ALL_FILES_AT_MAIN: &str = "d ./docs\nd ./tests\nd ./tests/data\nf ./README\nf ./docs/guide.md\nf ./tests/data/x.txt\nl ./readme-link\nx ./tests/run.sh\n";

#[tokio::test]
async fn checks_out_the_default_branch_a_branch_a_tag_or_a_sha() -> Result<()> {
    let server = NatsServer::start();
    let bus = bus(&server).await?;
    let repo = repo()?;
    let path = repo.bare.display().to_string();
    let file_url = format!("file://{path}");

    // The default branch (the remote's HEAD: main), from a plain path: every file, the
    // executable bit and the symbolic link kept, no .git.
    let (files, readme, env) = passes(&server, "default", &path, "", &[]).await?;
    assert_eq!(files, ALL_FILES_AT_MAIN);
    assert_eq!(readme, "two\n");
    assert_eq!(env["ASSAY_CONTENT_SHA"], repo.main);
    assert_eq!(env["ASSAY_CONTENT_REVISION"], "");
    assert_eq!(env["ASSAY_CONTENT_URL"], path);
    let status = final_status(&bus, "default").await?;
    assert_eq!(status.state(), ShardState::Passed, "{status:?}");

    // A branch, from a file:// url.
    let (files, _, env) = passes(&server, "branch", &file_url, "feature", &[]).await?;
    assert!(files.contains("f ./feature.txt\n"), "{files}");
    assert_eq!(env["ASSAY_CONTENT_SHA"], repo.feature);
    assert_eq!(env["ASSAY_CONTENT_REVISION"], "feature");

    // An annotated tag: its commit.
    let (files, readme, env) = passes(&server, "tag", &file_url, "v1", &[]).await?;
    assert_eq!(readme, "one\n");
    assert!(!files.contains("feature.txt"), "{files}");
    assert_eq!(env["ASSAY_CONTENT_SHA"], repo.first);

    // A full sha and an abbreviated one.
    for (execution, sha) in [
        ("full", repo.first.clone()),
        ("short", repo.first[..8].to_string()),
    ] {
        let (_, readme, env) = passes(&server, execution, &path, &sha, &[]).await?;
        assert_eq!(readme, "one\n", "{execution}");
        assert_eq!(env["ASSAY_CONTENT_SHA"], repo.first, "{execution}");
    }
    // A sha only a branch other than the default one reaches.
    let (files, _, _) = passes(&server, "feature-sha", &path, &repo.feature, &[]).await?;
    assert!(files.contains("f ./feature.txt\n"), "{files}");
    // A sha no branch or tag reaches (a pull request's head), asked for by id.
    let (files, _, env) = passes(&server, "pull-sha", &file_url, &repo.pull, &[]).await?;
    assert!(files.contains("f ./pr.txt\n"), "{files}");
    assert_eq!(env["ASSAY_CONTENT_SHA"], repo.pull);
    Ok(())
}

#[tokio::test]
async fn only_the_listed_paths_are_written() -> Result<()> {
    let server = NatsServer::start();
    let _bus = bus(&server).await?;
    let repo = repo()?;
    let path = repo.bare.display().to_string();
    let (files, readme, _) =
        passes(&server, "sparse", &path, "main", &["tests/data", "README"]).await?;
    assert_eq!(
        files,
        "d ./tests\nd ./tests/data\nf ./README\nf ./tests/data/x.txt\n"
    );
    assert_eq!(readme, "two\n");
    let (files, _, _) = passes(&server, "sparse-dir", &path, "", &["tests/"]).await?;
    assert_eq!(
        files,
        "d ./tests\nd ./tests/data\nf ./tests/data/x.txt\nx ./tests/run.sh\n"
    );
    Ok(())
}

/// Runs a job that must end errored before any step; returns the reason.
async fn errors(server: &NatsServer, bus: &Bus, job: &ShardJob, out: &Path) -> Result<String> {
    let o = run(job, server, &[]).await?;
    assert_eq!(
        o.status.code(),
        Some(4),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let status = final_status(bus, &job.execution_id).await?;
    assert_eq!(status.state(), ShardState::Errored, "{status:?}");
    eprintln!("{}: {}", job.execution_id, status.reason);
    assert!(!out.join("env").exists(), "a step ran");
    Ok(status.reason)
}

#[tokio::test]
async fn a_bad_revision_url_or_path_errors_the_shard_naming_it() -> Result<()> {
    let server = NatsServer::start();
    let bus = bus(&server).await?;
    let repo = repo()?;
    let path = repo.bare.display().to_string();
    let out = tempfile::tempdir()?;

    let reason = errors(
        &server,
        &bus,
        &shard_job("rev", &path, "nope", &[], out.path()),
        out.path(),
    )
    .await?;
    assert!(
        reason.starts_with(&format!("revision \"nope\" not found in {path}: "))
            && reason.ends_with("; branches: feature, main; tags: v1"),
        "{reason}"
    );
    let reason = errors(
        &server,
        &bus,
        &shard_job("sha", &path, "0123456789abcdef", &[], out.path()),
        out.path(),
    )
    .await?;
    assert!(
        reason.starts_with(&format!(
            "revision \"0123456789abcdef\" not found in {path}"
        )),
        "{reason}"
    );
    let unknown = "0123456789abcdef0123456789abcdef01234567";
    let reason = errors(
        &server,
        &bus,
        &shard_job("full-sha", &path, unknown, &[], out.path()),
        out.path(),
    )
    .await?;
    assert!(
        reason.starts_with(&format!(
            "revision \"{unknown}\" not found in {path}: the remote did not give commit {unknown}: "
        )),
        "{reason}"
    );
    let reason = errors(
        &server,
        &bus,
        &shard_job("spec", &path, "main~1", &[], out.path()),
        out.path(),
    )
    .await?;
    assert_eq!(
        reason,
        format!("revision \"main~1\" not found in {path}: not a branch, tag or commit sha")
    );

    let missing = format!("{}/missing.git", out.path().display());
    let reason = errors(
        &server,
        &bus,
        &shard_job("url", &missing, "", &[], out.path()),
        out.path(),
    )
    .await?;
    assert!(
        reason.starts_with(&format!("cannot fetch {missing}: ")),
        "{reason}"
    );

    let secret_url = "https://bot:s3cr3t@127.0.0.1:1/acme/shop.git";
    let reason = errors(
        &server,
        &bus,
        &shard_job("https", secret_url, "", &[], out.path()),
        out.path(),
    )
    .await?;
    assert!(
        reason.starts_with("cannot fetch https://127.0.0.1:1/acme/shop.git: "),
        "{reason}"
    );
    assert!(!reason.contains("s3cr3t"), "{reason}");

    let reason = errors(
        &server,
        &bus,
        &shard_job("path", &path, "v1", &["tests", "src/app"], out.path()),
        out.path(),
    )
    .await?;
    assert_eq!(
        reason,
        format!(
            "path \"src/app\" of content.git.paths is not in {path} at revision \"v1\" (commit {})",
            repo.first
        )
    );
    Ok(())
}

/// The credentials directory and its contents reach neither the steps' environment nor the
/// working directory; an ssh key is handed to `ssh` as a private copy.
#[tokio::test]
async fn credentials_are_used_for_the_clone_and_never_reach_the_steps() -> Result<()> {
    let server = NatsServer::start();
    let bus = bus(&server).await?;
    let repo = repo()?;
    let creds = tempfile::tempdir()?;
    std::fs::write(creds.path().join("ssh-privatekey"), "KEY-MATERIAL-42\n")?;

    // A stand-in for `ssh`: records its arguments and the key it was given, then runs the
    // remote command (`git-upload-pack '<path>'`) here.
    let bin = tempfile::tempdir()?;
    let log = bin.path().join("ssh.log");
    let fake = format!(
        r#"#!/bin/sh
echo "$@" >> {log}
while [ $# -gt 0 ]; do
  case $1 in
    -G) exit 0;;
    -i) cat "$2" >> {log}.key; stat -c %a "$2" >> {log}.key; shift 2;;
    -o|-p) shift 2;;
    -*) shift;;
    *) break;;
  esac
done
shift
exec sh -c "$*" 2>>{log}
"#,
        log = log.display()
    );
    let ssh = bin.path().join("ssh");
    std::fs::write(&ssh, fake)?;
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&ssh, std::fs::Permissions::from_mode(0o755))?;
    let path_var = format!(
        "{}:{}",
        bin.path().display(),
        std::env::var("PATH").unwrap_or_default()
    );

    let out = tempfile::tempdir()?;
    let url = format!("ssh://git@localhost{}", repo.bare.display());
    let mut job = shard_job("ssh", &url, "v1", &[], out.path());
    if let Some(g) = job.git.as_mut() {
        g.secret_name = "shop-git".into();
    }
    let o = run(
        &job,
        &server,
        &[
            (
                "ASSAY_GIT_CREDENTIALS_DIR",
                &creds.path().display().to_string(),
            ),
            ("PATH", &path_var),
        ],
    )
    .await?;
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}\nssh was called with: {}",
        String::from_utf8_lossy(&o.stderr),
        read(bin.path(), "ssh.log")
    );
    assert_eq!(read(out.path(), "readme"), "one\n");
    let args = read(bin.path(), "ssh.log");
    assert!(args.contains("-o IdentitiesOnly=yes"), "{args}");
    assert!(args.contains("-o BatchMode=yes"), "{args}");
    assert!(args.contains("localhost"), "{args}");
    // The key as given, in a file only the runner's user can read.
    // (Once per call of ssh: gix first asks `ssh -G` which variant it is.)
    let keys = read(bin.path(), "ssh.log.key");
    let lines: Vec<&str> = keys.lines().collect();
    assert!(
        !lines.is_empty() && lines.chunks(2).all(|c| c == ["KEY-MATERIAL-42", "600"]),
        "{keys}"
    );

    let env = env_of(out.path());
    assert!(!env.is_empty());
    assert!(!env.contains_key("ASSAY_GIT_CREDENTIALS_DIR"), "{env:?}");
    let creds_dir = creds.path().display().to_string();
    for (k, v) in &env {
        assert!(
            !v.contains("KEY-MATERIAL") && !v.contains(&creds_dir),
            "{k}={v}"
        );
    }
    assert_eq!(env["ASSAY_CONTENT_SHA"], repo.first);
    assert_eq!(
        env["ASSAY_CONTENT_URL"],
        format!("ssh://localhost{}", repo.bare.display())
    );
    let status = final_status(&bus, "ssh").await?;
    assert_eq!(status.state(), ShardState::Passed);

    // An ssh that is refused: the shard errors naming the host and the key's source.
    std::fs::write(
        &ssh,
        "#!/bin/sh\necho 'Permission denied (publickey).' >&2\nexit 255\n",
    )?;
    let out = tempfile::tempdir()?;
    let mut refused = shard_job("refused", &url, "", &[], out.path());
    if let Some(g) = refused.git.as_mut() {
        g.secret_name = "shop-git".into();
    }
    let o = run(&refused, &server, &[("PATH", &path_var)]).await?;
    assert_eq!(o.status.code(), Some(4));
    let status = final_status(&bus, "refused").await?;
    eprintln!("refused: {}", status.reason);
    assert!(
        status.reason.starts_with(&format!(
            "cannot fetch ssh://localhost{}: ",
            repo.bare.display()
        )) && status.reason.contains(
            "ssh to \"localhost\" failed or was refused (without a key: the runner uses ssh-privatekey from the directory ASSAY_GIT_CREDENTIALS_DIR names (the workflow's Secret \"shop-git\"))"
        ),
        "{}",
        status.reason
    );

    // Username and password: a file:// remote never asks for them, so they change nothing
    // there; they must not show up in the steps either.
    let basic = tempfile::tempdir()?;
    std::fs::write(basic.path().join("username"), "bot\n")?;
    std::fs::write(basic.path().join("password"), "pa55-w0rd\n")?;
    let out = tempfile::tempdir()?;
    let job = shard_job(
        "basic",
        &repo.bare.display().to_string(),
        "",
        &[],
        out.path(),
    );
    let o = run(
        &job,
        &server,
        &[(
            "ASSAY_GIT_CREDENTIALS_DIR",
            &basic.path().display().to_string(),
        )],
    )
    .await?;
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let env: HashMap<String, String> = env_of(out.path()).into_iter().collect();
    assert!(!env.contains_key("ASSAY_GIT_CREDENTIALS_DIR"), "{env:?}");
    assert!(env.values().all(|v| !v.contains("pa55-w0rd")), "{env:?}");
    assert!(!read(out.path(), "files").contains(".git"));

    // A credentials directory that cannot be used errors the shard, naming it.
    let out = tempfile::tempdir()?;
    let job = shard_job(
        "no-creds",
        &repo.bare.display().to_string(),
        "",
        &[],
        out.path(),
    );
    let empty = tempfile::tempdir()?;
    let o = run(
        &job,
        &server,
        &[(
            "ASSAY_GIT_CREDENTIALS_DIR",
            &empty.path().display().to_string(),
        )],
    )
    .await?;
    assert_eq!(o.status.code(), Some(4));
    let status = final_status(&bus, "no-creds").await?;
    assert_eq!(
        status.reason,
        format!(
            "git credentials directory {} (ASSAY_GIT_CREDENTIALS_DIR) holds neither username and password nor ssh-privatekey",
            empty.path().display()
        )
    );
    Ok(())
}

/// A job whose working directory is given and not empty is refused: the checkout never
/// writes over files.
#[tokio::test]
async fn a_working_directory_with_files_is_not_checked_out_into() -> Result<()> {
    let server = NatsServer::start();
    let bus = bus(&server).await?;
    let repo = repo()?;
    let out = tempfile::tempdir()?;
    let wd = tempfile::tempdir()?;
    std::fs::write(wd.path().join("mine.txt"), "keep")?;
    let mut job = shard_job(
        "busy",
        &repo.bare.display().to_string(),
        "",
        &[],
        out.path(),
    );
    job.working_dir = wd.path().display().to_string();
    let reason = errors(&server, &bus, &job, out.path()).await?;
    assert!(
        reason.ends_with("the directory is not empty; content.git needs a fresh working directory"),
        "{reason}"
    );
    assert_eq!(std::fs::read_to_string(wd.path().join("mine.txt"))?, "keep");
    Ok(())
}
