//! Inference with the real ONNX Runtime: a model directory's `model.onnx`, verified against
//! its manifest, served by a pool of ORT sessions.
//!
//! `Session::run` takes `&mut self`, so one session cannot serve two threads at once. Instead of
//! one lock around one session, an engine keeps a pool: a caller takes an idle session or
//! creates one (up to `max_sessions`, the query parallelism), and returns it after the run.
//! Engines are cached per model directory and id for the whole process ([`shared_engine`]).

pub mod runtime;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, OnceLock};

use ort::session::{builder::GraphOptimizationLevel, Session};
use ort::value::TensorRef;

use crate::error::{Error, Result};
use crate::export::{
    sha256_hex, INPUT_IMAGE, ONNX_FILE, OUTPUT_CLUSTER_ID, OUTPUT_DISTANCE, OUTPUT_EMBEDDING,
};
use crate::manifest::Manifest;

/// How an engine runs its sessions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct EngineOptions {
    /// ORT intra-op threads per session. `cluster_embed` already runs its batches on every core
    /// (rayon tasks), so the default is 1; a single caller (a benchmark, `evaluate`) may want more.
    pub intra_threads: usize,
    /// The most sessions (concurrent runs) the pool creates.
    pub max_sessions: usize,
    /// Images per ORT run; larger inputs are split.
    pub batch_size: usize,
}

impl Default for EngineOptions {
    fn default() -> Self {
        Self {
            intra_threads: 1,
            max_sessions: std::thread::available_parallelism().map_or(2, |n| n.get()),
            batch_size: 256,
        }
    }
}

/// The three outputs of the graph for n images.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Embedded {
    /// n×d, row-major.
    pub embedding: Vec<f32>,
    pub cluster_id: Vec<i32>,
    pub distance: Vec<f32>,
}

struct Pool {
    idle: Vec<Session>,
    created: usize,
}

/// One model, loaded once, served by a pool of ORT sessions.
pub struct InferenceEngine {
    pub manifest: Manifest,
    pub dir: PathBuf,
    pub options: EngineOptions,
    model: Vec<u8>,
    pool: Mutex<Pool>,
    returned: Condvar,
}

impl std::fmt::Debug for InferenceEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InferenceEngine")
            .field("dir", &self.dir)
            .field("id", &self.manifest.id)
            .field("options", &self.options)
            .finish()
    }
}

impl InferenceEngine {
    /// Loads `dir/model.onnx`, refusing it unless its sha256 is the manifest's id and its
    /// inputs and outputs are the contract's. Creates the first session, so a broken model
    /// fails here, before any output exists.
    pub fn load(dir: &Path, options: EngineOptions) -> Result<Self> {
        let manifest = Manifest::read(dir)?;
        let path = dir.join(ONNX_FILE);
        if !path.is_file() {
            return Err(Error::File {
                path,
                message: "missing; run `salient export` on the model directory".into(),
            });
        }
        let model = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
        let sha = sha256_hex(&model);
        if manifest.id.is_empty() {
            return Err(Error::File {
                path: dir.join(crate::manifest::MANIFEST_FILE),
                message: "has no model id; run `salient export` on the model directory".into(),
            });
        }
        if sha != manifest.id {
            return Err(Error::File {
                path,
                message: format!(
                    "sha256 {sha} differs from the manifest's id {}; the file was changed or corrupted (re-run `salient export`)",
                    manifest.id
                ),
            });
        }
        let engine = Self {
            manifest,
            dir: dir.to_path_buf(),
            options: EngineOptions {
                intra_threads: options.intra_threads.max(1),
                max_sessions: options.max_sessions.max(1),
                batch_size: options.batch_size.max(1),
            },
            model,
            pool: Mutex::new(Pool {
                idle: Vec::new(),
                created: 0,
            }),
            returned: Condvar::new(),
        };
        let first = engine.new_session()?;
        engine.check_signature(&first)?;
        {
            let mut pool = engine.lock();
            pool.idle.push(first);
            pool.created = 1;
        }
        tracing::debug!(model = %dir.display(), id = %engine.manifest.id, options = ?engine.options, "ONNX model loaded");
        Ok(engine)
    }

    fn model_path(&self) -> PathBuf {
        self.dir.join(ONNX_FILE)
    }

    fn new_session(&self) -> Result<Session> {
        let environment = runtime::environment()?;
        let path = self.model_path();
        let fail = |e: String| Error::File {
            path: path.clone(),
            message: format!("ONNX Runtime cannot load it: {e}"),
        };
        Session::builder(environment)
            .map_err(|e| fail(e.to_string()))?
            .with_optimization_level(GraphOptimizationLevel::Level3)
            .map_err(|e| fail(e.to_string()))?
            .with_intra_threads(self.options.intra_threads)
            .map_err(|e| fail(e.to_string()))?
            .commit_from_memory(&self.model)
            .map_err(|e| fail(e.to_string()))
    }

    /// The graph must take `image` (uint8 N×C×H×W of the manifest's shape) and give the three
    /// outputs of the contract.
    fn check_signature(&self, session: &Session) -> Result<()> {
        let shape = self.manifest.input.shape;
        let expected = [
            -1,
            shape.channels as i64,
            shape.height as i64,
            shape.width as i64,
        ];
        let fail = |message: String| Error::File {
            path: self.model_path(),
            message,
        };
        let input = match session.inputs() {
            [input] if input.name() == INPUT_IMAGE => input,
            inputs => {
                let names: Vec<&str> = inputs.iter().map(|i| i.name()).collect();
                return Err(fail(format!(
                    "inputs are {names:?}, expected one input `{INPUT_IMAGE}`"
                )));
            }
        };
        let dtype = input.dtype();
        let ok = dtype.tensor_type() == Some(ort::value::TensorElementType::Uint8)
            && dtype
                .tensor_shape()
                .is_some_and(|s| s.len() == 4 && s[1..] == expected[1..]);
        if !ok {
            return Err(fail(format!(
                "input `{INPUT_IMAGE}` is {dtype:?}, expected uint8 N×{}×{}×{} (the manifest's input)",
                shape.channels, shape.height, shape.width
            )));
        }
        for name in [OUTPUT_EMBEDDING, OUTPUT_CLUSTER_ID, OUTPUT_DISTANCE] {
            if !session.outputs().iter().any(|o| o.name() == name) {
                return Err(fail(format!("has no output `{name}`")));
            }
        }
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Pool> {
        // A panic while holding the lock cannot leave the pool inconsistent (push/pop only).
        self.pool.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes an idle session, creates one if the pool is below its size, or waits.
    fn checkout(&self) -> Result<Session> {
        let mut pool = self.lock();
        loop {
            if let Some(session) = pool.idle.pop() {
                return Ok(session);
            }
            if pool.created < self.options.max_sessions {
                pool.created += 1;
                drop(pool);
                return self.new_session().inspect_err(|_| self.lock().created -= 1);
            }
            pool = self.returned.wait(pool).unwrap_or_else(|e| e.into_inner());
        }
    }

    fn checkin(&self, session: Session) {
        self.lock().idle.push(session);
        self.returned.notify_one();
    }

    /// Sessions created so far (for logs and tests).
    pub fn sessions(&self) -> usize {
        self.lock().created
    }

    /// Runs the graph on decoded images (n×C×H×W uint8, row-major), in batches of
    /// `options.batch_size`.
    pub fn run(&self, pixels: &[u8]) -> Result<Embedded> {
        let shape = self.manifest.input.shape;
        let per_image = shape.len();
        if per_image == 0 || !pixels.len().is_multiple_of(per_image) {
            return Err(Error::Invalid(format!(
                "{} bytes of pixels is not a whole number of {}×{}×{} images",
                pixels.len(),
                shape.channels,
                shape.height,
                shape.width
            )));
        }
        let n = pixels.len() / per_image;
        let d = self.manifest.d;
        let mut out = Embedded {
            embedding: Vec::with_capacity(n * d),
            cluster_id: Vec::with_capacity(n),
            distance: Vec::with_capacity(n),
        };
        if n == 0 {
            return Ok(out);
        }
        let mut session = self.checkout()?;
        let result = (|| {
            for chunk in pixels.chunks(self.options.batch_size * per_image) {
                self.run_one(&mut session, chunk, &mut out)?;
            }
            Ok(())
        })();
        self.checkin(session);
        result.map(|_| out)
    }

    fn run_one(&self, session: &mut Session, pixels: &[u8], out: &mut Embedded) -> Result<()> {
        let shape = self.manifest.input.shape;
        let n = pixels.len() / shape.len();
        let d = self.manifest.d;
        let fail = |e: ort::Error| Error::Runtime(format!("running {}: {e}", self.dir.display()));
        let input =
            TensorRef::from_array_view(([n, shape.channels, shape.height, shape.width], pixels))
                .map_err(fail)?;
        let outputs = session
            .run(ort::inputs![INPUT_IMAGE => input])
            .map_err(fail)?;
        let (_, embedding) = outputs[OUTPUT_EMBEDDING]
            .try_extract_tensor::<f32>()
            .map_err(fail)?;
        let (_, cluster_id) = outputs[OUTPUT_CLUSTER_ID]
            .try_extract_tensor::<i32>()
            .map_err(fail)?;
        let (_, distance) = outputs[OUTPUT_DISTANCE]
            .try_extract_tensor::<f32>()
            .map_err(fail)?;
        if embedding.len() != n * d || cluster_id.len() != n || distance.len() != n {
            return Err(Error::Runtime(format!(
                "{}: the graph returned {} embedding values, {} cluster ids and {} distances for {n} images of d = {d}",
                self.model_path().display(),
                embedding.len(),
                cluster_id.len(),
                distance.len()
            )));
        }
        out.embedding.extend_from_slice(embedding);
        out.cluster_id.extend_from_slice(cluster_id);
        out.distance.extend_from_slice(distance);
        Ok(())
    }
}

/// The process-wide engine of a model directory: loaded once and shared by every caller that
/// asks with the same options. A model re-exported in place (new id) gets a new engine.
pub fn shared_engine(dir: &Path, options: EngineOptions) -> Result<Arc<InferenceEngine>> {
    type Key = (PathBuf, String, EngineOptions);
    static ENGINES: OnceLock<Mutex<HashMap<Key, Arc<InferenceEngine>>>> = OnceLock::new();
    let canonical = dir.canonicalize().map_err(|e| Error::io(dir, e))?;
    let id = Manifest::read(&canonical)?.id;
    let key = (canonical.clone(), id, options);
    let engines = ENGINES.get_or_init(Default::default);
    if let Some(engine) = engines.lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
        return Ok(engine.clone());
    }
    // Loading happens outside the lock: it hashes the model and creates a session.
    let engine = Arc::new(InferenceEngine::load(&canonical, options)?);
    let mut map = engines.lock().unwrap_or_else(|e| e.into_inner());
    Ok(map.entry(key).or_insert(engine).clone())
}

/// What `salient inspect` reports about a model directory.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Inspection {
    pub name: String,
    pub id: String,
    pub method: String,
    pub created: String,
    /// `uint8 N×C×H×W`.
    pub input: String,
    pub normalization: crate::preprocess::Normalization,
    pub outputs: Vec<String>,
    pub k: usize,
    pub d: usize,
    pub epochs_trained: usize,
    pub training_data: crate::manifest::TrainingData,
    pub metrics: Option<crate::metrics::ClusterScores>,
    pub onnx_runtime: String,
}

impl Inspection {
    pub fn to_text(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let _ = writeln!(s, "name      {}", self.name);
        let _ = writeln!(s, "id        {} (sha256 of model.onnx, verified)", self.id);
        let _ = writeln!(
            s,
            "method    {}, {} epochs, created {}",
            self.method, self.epochs_trained, self.created
        );
        let _ = writeln!(s, "input     image: {}", self.input);
        let _ = writeln!(
            s,
            "normalise mean {:?} std {:?}",
            self.normalization.mean, self.normalization.std
        );
        let _ = writeln!(s, "outputs   {}", self.outputs.join(", "));
        let _ = writeln!(s, "k, d      {}, {}", self.k, self.d);
        let data = &self.training_data;
        for (role, files, rows) in [
            ("target", &data.target, data.target_rows),
            ("reference", &data.reference, data.reference_rows),
        ] {
            for f in files.iter() {
                let _ = writeln!(
                    s,
                    "{role:<9} {} ({rows} rows, footer sha256 {})",
                    f.path.display(),
                    f.footer_sha256
                );
            }
        }
        if let Some(m) = &self.metrics {
            let _ = writeln!(
                s,
                "metrics   ACC {:.4}  NMI {:.4}  ARI {:.4}  (n = {})",
                m.acc, m.nmi, m.ari, m.n
            );
        }
        let _ = writeln!(s, "runtime   {}", self.onnx_runtime);
        s
    }
}

/// Loads the model as inference would (hash check, ORT session, signature check) and
/// describes it.
pub fn inspect(dir: &Path) -> Result<Inspection> {
    let engine = InferenceEngine::load(
        dir,
        EngineOptions {
            max_sessions: 1,
            ..Default::default()
        },
    )?;
    let m = engine.manifest;
    let shape = m.input.shape;
    Ok(Inspection {
        input: format!(
            "uint8 N×{}×{}×{}",
            shape.channels, shape.height, shape.width
        ),
        outputs: vec![
            format!("{OUTPUT_EMBEDDING}: float32 N×{}", m.d),
            format!("{OUTPUT_CLUSTER_ID}: int32 N"),
            format!("{OUTPUT_DISTANCE}: float32 N"),
        ],
        name: m.name,
        id: m.id,
        method: m.method,
        created: m.created,
        normalization: m.input.normalization,
        k: m.k,
        d: m.d,
        epochs_trained: m.epochs_trained,
        training_data: m.training_data,
        metrics: m.metrics,
        onnx_runtime: format!(
            "ONNX Runtime {} ({})",
            runtime::ORT_VERSION,
            runtime::library_path()?.display()
        ),
    })
}
