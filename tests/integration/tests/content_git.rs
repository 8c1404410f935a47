//! `content.git` through the whole local stack: a workflow whose tests live in a git
//! repository (a bare one made here with the `git` program) runs from a checkout at the
//! workflow's revision, or at the sha the triggering run request names, with exact counts.
//! Real assay-runner processes (build them first: `cargo build --bins`).

use assay_testkit::suite::{JUNIT_SUITE_SH, git};
use std::path::Path;
use std::time::Duration;

use assay_integration::{Sandbox, describe, status_of, test_ids};
use assay_proto::{ExecutionStatus, RunRequest, ShardJob};
use futures::StreamExt as _;
use prost::Message as _;

const LONG: Duration = Duration::from_secs(60);

/// A bare repository whose `main` holds the suite with 5 tests (4 pass, 1 skips) and
/// `docs/` (not checked out: the workflow lists only `suite/`); a later commit on a branch
/// `next` adds 2 tests (1 fails). Returns (the bare repository, `next`'s commit).
fn repository(root: &Path) -> (String, String) {
    let work = root.join("work");
    std::fs::create_dir_all(work.join("suite")).unwrap();
    std::fs::create_dir_all(work.join("docs")).unwrap();
    std::fs::write(work.join("suite/suite.sh"), JUNIT_SUITE_SH).unwrap();
    std::fs::write(
        work.join("suite/ids.txt"),
        "t1_ok\nt2_ok\nt3_ok\nt4_ok\nt5_skip\n",
    )
    .unwrap();
    std::fs::write(work.join("docs/big.md"), "not needed by the tests\n").unwrap();
    git(&work, &["init", "-q"]);
    git(&work, &["add", "-A"]);
    git(&work, &["commit", "-q", "-m", "suite"]);
    git(&work, &["checkout", "-q", "-b", "next"]);
    std::fs::write(
        work.join("suite/ids.txt"),
        "t1_ok\nt2_ok\nt3_ok\nt4_ok\nt5_skip\nt6_ok\nt7_fail\n",
    )
    .unwrap();
    git(&work, &["commit", "-q", "-am", "two more"]);
    let next = git(&work, &["rev-parse", "HEAD"]);
    git(&work, &["checkout", "-q", "main"]);
    git(root, &["clone", "-q", "--bare", "work", "shop.git"]);
    (root.join("shop.git").display().to_string(), next)
}

fn workflow(url: &str) -> String {
    format!(
        r#"apiVersion: assay.dev/v1alpha1
kind: TestWorkflow
metadata: {{name: from-git}}
spec:
  content:
    git:
      url: "{url}"
      revision: main
      paths: [suite]
      credentials: {{secretName: shop-git}}
  steps:
    - name: show
      run: 'echo "content at $ASSAY_CONTENT_SHA"; test ! -e docs && test ! -e .git'
  tests:
    list: cat suite/ids.txt
    run: sh suite/suite.sh {{report}} {{tests}}
    reports: ["{{report}}"]
  parallel: {{count: 2}}
"#
    )
}

/// Collects the shard jobs the scheduler publishes (core subscription: the launcher's
/// work-queue consumer removes them from the stream once handled).
async fn shard_jobs(sb: &Sandbox) -> async_nats::Subscriber {
    sb.bus
        .client()
        .subscribe(assay_bus::subjects::SHARDS_ALL)
        .await
        .expect("subscribe to shard jobs")
}

async fn jobs_of(sub: &mut async_nats::Subscriber, id: &str, n: usize) -> Vec<ShardJob> {
    let mut jobs = Vec::new();
    while jobs.len() < n {
        let msg = tokio::time::timeout(LONG, sub.next())
            .await
            .expect("shard jobs in time")
            .expect("subscription open");
        let job = ShardJob::decode(msg.payload).expect("a shard job");
        if job.execution_id == id {
            jobs.push(job);
        }
    }
    jobs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_suite_checked_out_from_git_runs_at_the_workflow_revision_or_the_event_sha() {
    let root = tempfile::tempdir().unwrap();
    let (url, next) = repository(root.path());
    let main = git(Path::new(&url), &["rev-parse", "main"]);
    let sb = Sandbox::start(&[("from-git.yaml", &workflow(&url))]).await;
    let mut sub = shard_jobs(&sb).await;

    // No sha in the request: the workflow's revision (main), 5 tests over 2 shards.
    let id = sb.run("from-git", &[]).await;
    let d = sb.wait_for_terminal(&id, LONG).await;
    assert_eq!(status_of(&d), ExecutionStatus::Passed, "{}", describe(&d));
    let e = d.execution.clone().unwrap();
    assert_eq!(
        (e.passed, e.failed, e.skipped),
        (4, 0, 1),
        "{}",
        describe(&d)
    );
    let mut ids = test_ids(&d);
    ids.sort();
    assert_eq!(ids, ["t1_ok", "t2_ok", "t3_ok", "t4_ok", "t5_skip"]);
    assert_eq!(d.shards.len(), 2);
    for job in jobs_of(&mut sub, &id, 2).await {
        let git = job.git.expect("the job carries content.git");
        assert_eq!(
            (
                git.url.as_str(),
                git.revision.as_str(),
                git.revision_source.as_str()
            ),
            (url.as_str(), "main", "workflow")
        );
        assert_eq!(git.paths, ["suite"]);
        assert_eq!(git.secret_name, "shop-git");
    }
    let logs = sb.logs_text(&id, false, LONG).await;
    assert!(
        logs.contains(&format!(
            "checked out {url} at revision main (content.git.revision): commit {main}, 2 file(s)"
        )),
        "{logs}"
    );
    assert!(logs.contains(&format!("content at {main}")), "{logs}");

    // A run request naming a sha (as `assay run --label sha=...` or a webhook push does):
    // that commit, 7 tests.
    let id = ulid::Ulid::new().to_string();
    let req = RunRequest {
        header: Some(assay_bus::header("test", format!("run/{id}"), None)),
        workflow: "from-git".into(),
        requested_by: "test".into(),
        execution_id: id.clone(),
        labels: [("sha".to_string(), next.clone())].into(),
        ..Default::default()
    };
    sb.publish_request(&req).await;
    let d = sb.wait_for_terminal(&id, LONG).await;
    assert_eq!(status_of(&d), ExecutionStatus::Failed, "{}", describe(&d));
    let e = d.execution.clone().unwrap();
    assert_eq!(
        (e.passed, e.failed, e.skipped),
        (5, 1, 1),
        "{}",
        describe(&d)
    );
    assert_eq!(test_ids(&d).len(), 7);
    for job in jobs_of(&mut sub, &id, 2).await {
        let git = job.git.expect("the job carries content.git");
        assert_eq!(
            (git.revision.as_str(), git.revision_source.as_str()),
            (next.as_str(), "event")
        );
    }
    let logs = sb.logs_text(&id, false, LONG).await;
    assert!(
        logs.contains(&format!(
            "checked out {url} at revision {next} (the triggering event's sha): commit {next}"
        )),
        "{logs}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unknown_revision_errors_every_shard_naming_it() {
    let root = tempfile::tempdir().unwrap();
    let (url, _) = repository(root.path());
    let yaml = workflow(&url).replace("revision: main", "revision: no-such-branch");
    let sb = Sandbox::start(&[("from-git.yaml", &yaml)]).await;
    let id = sb.run("from-git", &[]).await;
    let d = sb.wait_for_terminal(&id, LONG).await;
    assert_eq!(status_of(&d), ExecutionStatus::Errored, "{}", describe(&d));
    assert!(test_ids(&d).is_empty());
    for s in &d.shards {
        let reason = &s.summary.as_ref().unwrap().reason;
        assert!(
            reason.starts_with(&format!("revision \"no-such-branch\" not found in {url}")),
            "{}",
            describe(&d)
        );
    }
}
