//! Problems: stored tests, checker, groups with points and limits, in versions.
//!
//! Every `put` makes a new immutable version (1, 2, ...). A submission names the version
//! current when it was submitted ([`ProblemRef`]) and is judged on exactly that one.
//! Test data (inputs and answers) is stored by content hash (SHA-256), apart from the
//! version record, so a new version that keeps most tests stores little.
//!
//! Redis keys (under the namespace):
//! - `{ns}:problem:{id}`: hash with `latest` (the version counter, never reset), `current`
//!   (absent once deleted) and `v:{n}` (the JSON record of version n);
//! - `{ns}:problems`: set of the ids that have a current version;
//! - `{ns}:pdata:{sha256}`: the bytes of one test file, shared by every version using it.
//!
//! Old versions stay so that queued submissions pinned to them still judge.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use fred::prelude::*;
use fred::types::scripts::Script;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::Result;
use crate::types::{CompareMode, Epsilon, Limits};

/// A score or a number of points. Compared by bits so the types holding it stay `Eq`.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Points(pub f64);

impl PartialEq for Points {
    fn eq(&self, other: &Self) -> bool {
        self.0.to_bits() == other.0.to_bits()
    }
}

impl Eq for Points {}

/// How a group's tests make its score.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum GroupScoring {
    /// All the points when every test is accepted, else none.
    #[default]
    AllOrNothing,
    /// Points x (sum of the tests' scores) / tests.
    PerTest,
    /// Points x the smallest test score.
    Min,
}

/// How a checker program is called.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum CheckerProtocol {
    /// Kattis output validator: `checker input answer feedback_dir < output`; 42 / 43.
    Kattis,
    /// testlib: `checker input output answer`; 0 ok, 1 and 2 wrong, 7 partial.
    Testlib,
}

/// A stored file: its SHA-256 (hex) and length.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct DataRef {
    pub hash: String,
    pub len: u64,
}

/// A file compiled with a checker (e.g. `testlib.h`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckerFile {
    pub name: String,
    pub content: String,
}

/// A checker program, compiled once per problem version on each worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckerProgram {
    pub protocol: CheckerProtocol,
    pub language: String,
    pub source: String,
    #[serde(default)]
    pub files: Vec<CheckerFile>,
}

/// How outputs are judged: a built-in compare mode, or a program.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Checker {
    #[serde(default)]
    pub compare: CompareMode,
    #[serde(default)]
    pub epsilon: Option<Epsilon>,
    #[serde(default)]
    pub program: Option<CheckerProgram>,
}

/// One test of a problem. A test that is not a sample is hidden.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProblemTest {
    pub name: Option<String>,
    pub group: String,
    pub sample: bool,
    pub input: DataRef,
    pub answer: Option<DataRef>,
}

/// A group of tests with its points.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TestGroup {
    pub name: String,
    pub points: Points,
    #[serde(default)]
    pub scoring: GroupScoring,
}

/// One version of a problem (without its test data, which is stored by hash).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    pub id: String,
    /// Assigned by the store on `put` (1, 2, ...).
    #[serde(default)]
    pub version: u32,
    pub title: String,
    pub statement: Option<String>,
    /// Per test, after the server's defaults and maxima.
    pub limits: Limits,
    pub tests: Vec<ProblemTest>,
    /// In order; every test's group is one of these.
    pub groups: Vec<TestGroup>,
    pub checker: Checker,
    pub created_at: DateTime<Utc>,
}

impl Problem {
    /// The sum of the groups' points.
    pub fn max_score(&self) -> f64 {
        self.groups.iter().map(|g| g.points.0).sum()
    }

    /// Tests in group `name`.
    pub fn group_size(&self, name: &str) -> usize {
        self.tests.iter().filter(|t| t.group == name).count()
    }

    /// Bytes of test data, each distinct file counted once.
    pub fn data_bytes(&self) -> u64 {
        let mut seen = HashMap::new();
        for t in &self.tests {
            seen.insert(&t.input.hash, t.input.len);
            if let Some(a) = &t.answer {
                seen.insert(&a.hash, a.len);
            }
        }
        seen.values().sum()
    }

    /// The reference a submission pins.
    pub fn reference(&self) -> ProblemRef {
        ProblemRef {
            id: self.id.clone(),
            version: self.version,
        }
    }
}

/// A problem version a submission is judged against.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProblemRef {
    pub id: String,
    pub version: u32,
}

/// The outcome of one group of a submission.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupResult {
    pub name: String,
    pub verdict: crate::types::Verdict,
    pub score: Points,
    pub max_score: Points,
}

/// SHA-256 of `bytes`, as lowercase hex.
pub fn content_hash(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A problem to store and the test data it refers to.
#[derive(Debug, Clone, Default)]
pub struct ProblemUpload {
    pub data: HashMap<String, Arc<Vec<u8>>>,
}

impl ProblemUpload {
    /// Keeps `bytes` and returns the reference a test stores.
    pub fn add(&mut self, bytes: Vec<u8>) -> DataRef {
        let hash = content_hash(&bytes);
        let len = bytes.len() as u64;
        self.data
            .entry(hash.clone())
            .or_insert_with(|| Arc::new(bytes));
        DataRef { hash, len }
    }

    /// Bytes of data held, each distinct file once.
    pub fn bytes(&self) -> u64 {
        self.data.values().map(|d| d.len() as u64).sum()
    }
}

/// Where problems live: memory (standalone) or Redis. Versions are immutable.
#[async_trait]
pub trait ProblemStore: Send + Sync + 'static {
    /// Stores `problem` as a new version (its `version` is ignored and assigned) with the
    /// data it refers to, and makes it current. The data is written before the record,
    /// so a reader never sees a version whose data is missing.
    async fn put(&self, problem: Problem, upload: ProblemUpload) -> Result<Problem>;
    /// The current version of `id`; `None` when unknown or deleted.
    async fn get(&self, id: &str) -> Result<Option<Problem>>;
    /// Version `version` of `id`, current or not (deleted problems keep their versions
    /// for the submissions pinned to them).
    async fn version(&self, id: &str, version: u32) -> Result<Option<Problem>>;
    /// Every problem's current version, by id.
    async fn list(&self) -> Result<Vec<Problem>>;
    /// Makes `id` unknown to `get` and `list`; false when it was not there.
    async fn delete(&self, id: &str) -> Result<bool>;
    /// A stored test file by hash.
    async fn data(&self, hash: &str) -> Result<Option<Arc<Vec<u8>>>>;
}

/// Shared handle used by the server and the worker.
pub type SharedProblems = Arc<dyn ProblemStore>;

#[derive(Default)]
struct Entry {
    latest: u32,
    current: Option<u32>,
    versions: BTreeMap<u32, Arc<Problem>>,
}

type DataByHash = HashMap<String, Arc<Vec<u8>>>;

/// The embedded broker's problems, in memory.
#[derive(Default)]
pub struct MemoryProblems {
    inner: Mutex<(BTreeMap<String, Entry>, DataByHash)>,
}

impl MemoryProblems {
    pub fn new() -> Arc<Self> {
        Arc::new(MemoryProblems::default())
    }
}

#[async_trait]
impl ProblemStore for MemoryProblems {
    async fn put(&self, mut problem: Problem, upload: ProblemUpload) -> Result<Problem> {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let (problems, data) = &mut *inner;
        for (hash, bytes) in upload.data {
            data.entry(hash).or_insert(bytes);
        }
        let entry = problems.entry(problem.id.clone()).or_default();
        entry.latest += 1;
        problem.version = entry.latest;
        entry.current = Some(entry.latest);
        entry
            .versions
            .insert(entry.latest, Arc::new(problem.clone()));
        Ok(problem)
    }

    async fn get(&self, id: &str) -> Result<Option<Problem>> {
        let inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        Ok(inner.0.get(id).and_then(|e| {
            e.current
                .and_then(|v| e.versions.get(&v))
                .map(|p| p.as_ref().clone())
        }))
    }

    async fn version(&self, id: &str, version: u32) -> Result<Option<Problem>> {
        let inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        Ok(inner
            .0
            .get(id)
            .and_then(|e| e.versions.get(&version))
            .map(|p| p.as_ref().clone()))
    }

    async fn list(&self) -> Result<Vec<Problem>> {
        let inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        Ok(inner
            .0
            .values()
            .filter_map(|e| e.current.and_then(|v| e.versions.get(&v)))
            .map(|p| p.as_ref().clone())
            .collect())
    }

    async fn delete(&self, id: &str) -> Result<bool> {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        Ok(inner.0.get_mut(id).and_then(|e| e.current.take()).is_some())
    }

    async fn data(&self, hash: &str) -> Result<Option<Arc<Vec<u8>>>> {
        let inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        Ok(inner.1.get(hash).cloned())
    }
}

/// Makes the record version `latest + 1` current, atomically.
const PUT_LUA: &str = r"
local v = redis.call('HINCRBY', KEYS[1], 'latest', 1)
redis.call('HSET', KEYS[1], 'v:' .. v, ARGV[1], 'current', v)
redis.call('SADD', KEYS[2], ARGV[2])
return v
";

/// Problems on Redis.
pub struct RedisProblems {
    client: Client,
    ns: String,
    put: Script,
}

impl RedisProblems {
    /// Connects to the Redis at `url`; keys live under `namespace:`.
    pub async fn connect(url: &str, namespace: &str) -> Result<Arc<Self>> {
        let config = Config::from_url(url)?;
        let client = Builder::from_config(config)
            .set_policy(ReconnectPolicy::new_exponential(0, 50, 2_000, 2))
            .with_performance_config(|p| {
                p.default_command_timeout = Duration::from_secs(10);
            })
            .build()?;
        client.init().await?;
        Ok(Arc::new(RedisProblems {
            client,
            ns: namespace.to_owned(),
            put: Script::from_lua(PUT_LUA),
        }))
    }

    fn key(&self, id: &str) -> String {
        format!("{}:problem:{id}", self.ns)
    }

    fn set_key(&self) -> String {
        format!("{}:problems", self.ns)
    }

    fn data_key(&self, hash: &str) -> String {
        format!("{}:pdata:{hash}", self.ns)
    }

    async fn read(&self, id: &str, version: u32) -> Result<Option<Problem>> {
        let json: Option<String> = self
            .client
            .hget(self.key(id), format!("v:{version}"))
            .await?;
        let Some(json) = json else {
            return Ok(None);
        };
        let mut problem: Problem = serde_json::from_str(&json)?;
        problem.version = version;
        Ok(Some(problem))
    }
}

#[async_trait]
impl ProblemStore for RedisProblems {
    async fn put(&self, mut problem: Problem, upload: ProblemUpload) -> Result<Problem> {
        // Data first (content-addressed, so NX: a file already there is never rewritten),
        // in one pipeline; then the record in one script.
        if !upload.data.is_empty() {
            let pipeline = self.client.pipeline();
            for (hash, bytes) in &upload.data {
                let _: () = pipeline
                    .set(
                        self.data_key(hash),
                        bytes.as_slice(),
                        None,
                        Some(SetOptions::NX),
                        false,
                    )
                    .await?;
            }
            let _: Vec<Value> = pipeline.all().await?;
        }
        problem.version = 0;
        let json = serde_json::to_string(&problem)?;
        let version: u32 = self
            .put
            .evalsha_with_reload(
                &self.client,
                vec![self.key(&problem.id), self.set_key()],
                vec![json, problem.id.clone()],
            )
            .await?;
        problem.version = version;
        Ok(problem)
    }

    async fn get(&self, id: &str) -> Result<Option<Problem>> {
        let current: Option<u32> = self.client.hget(self.key(id), "current").await?;
        match current {
            Some(v) => self.read(id, v).await,
            None => Ok(None),
        }
    }

    async fn version(&self, id: &str, version: u32) -> Result<Option<Problem>> {
        self.read(id, version).await
    }

    async fn list(&self) -> Result<Vec<Problem>> {
        let mut ids: Vec<String> = self.client.smembers(self.set_key()).await?;
        ids.sort();
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(p) = self.get(&id).await? {
                out.push(p);
            }
        }
        Ok(out)
    }

    async fn delete(&self, id: &str) -> Result<bool> {
        let removed: u64 = self.client.hdel(self.key(id), "current").await?;
        let _: u64 = self.client.srem(self.set_key(), id).await?;
        Ok(removed > 0)
    }

    async fn data(&self, hash: &str) -> Result<Option<Arc<Vec<u8>>>> {
        let bytes: Option<Vec<u8>> = self.client.get(self.data_key(hash)).await?;
        Ok(bytes.map(Arc::new))
    }
}
