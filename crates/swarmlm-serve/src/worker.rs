//! The engine side of the server: a few OS threads, each with its own loaded model, taking
//! generation jobs from one first-in-first-out queue.
//!
//! Generation is CPU-bound and runs on the engine's own worker pool, so it never runs on the
//! async runtime. Each job carries a channel to its HTTP handler; when the handler is gone (the
//! client disconnected, so hyper dropped the response), the channel is closed and the job stops
//! at the next token. Jobs still waiting when their client leaves are skipped.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;

use swarmlm_engine::sampling::{Sampler, SamplingParams};
use swarmlm_engine::tokenizer::Tokenizer;
use swarmlm_engine::{generate_cancellable, GenerateOptions, Model, PagerConfig, StopReason};
use swarmlm_weights::Checkpoint;
use tokio::sync::mpsc::UnboundedSender;

/// What a handler hears from its job.
#[derive(Debug)]
pub enum JobEvent {
    /// Generation started (the job left the queue).
    Started,
    /// Text that is final (never part of a stop string).
    Text(String),
    /// The end: counts and why it ended, or the engine's error.
    Done(Result<Finished, String>),
}

/// How a generation ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Finished {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub stop_reason: StopReason,
    pub text: String,
}

/// One request for the engine.
pub struct Job {
    pub prompt_ids: Vec<u32>,
    pub options: GenerateOptions,
    pub sampling: SamplingParams,
    pub events: UnboundedSender<JobEvent>,
}

/// How the engine threads are set up.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Generations that run at once (each on its own model instance and thread pool).
    pub max_concurrent: usize,
    /// Requests that may wait for a free slot; more are refused (HTTP 429).
    pub max_queue: usize,
    /// Engine threads per running generation (0 = the physical cores, shared out).
    pub threads: usize,
    /// Expert pager for each model instance (the budget is shared out between them).
    pub pager: Option<PagerConfig>,
}

/// The queue in front of the engine threads.
pub struct EnginePool {
    queue: Mutex<Option<mpsc::Sender<Job>>>,
    /// Jobs accepted and not yet finished (waiting + running).
    in_flight: Arc<AtomicUsize>,
    running: Arc<AtomicUsize>,
    /// Set at shutdown after the grace period: running jobs stop at their next token.
    abort: Arc<AtomicBool>,
    limit: usize,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

/// Refused: the queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueFull {
    pub limit: usize,
}

impl EnginePool {
    /// Loads `config.max_concurrent` model instances on their own threads; returns once every
    /// one is ready (or the first error).
    pub fn start(
        checkpoint: Arc<Checkpoint>,
        tokenizer: Arc<Tokenizer>,
        config: &EngineConfig,
    ) -> Result<EnginePool, Box<swarmlm_engine::EngineError>> {
        let slots = config.max_concurrent.max(1);
        let threads = match (config.threads, slots) {
            // One slot: the engine's own default (one thread per physical core).
            (0, 1) => 0,
            (0, s) => (available_cores() / s).max(1),
            (n, _) => n,
        };
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        let running = Arc::new(AtomicUsize::new(0));
        let in_flight = Arc::new(AtomicUsize::new(0));
        let abort = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = mpsc::channel();
        let mut handles = Vec::with_capacity(slots);
        for slot in 0..slots {
            let checkpoint = checkpoint.clone();
            let tokenizer = tokenizer.clone();
            let rx = rx.clone();
            let ready = ready_tx.clone();
            let pager = config.pager.clone().map(|mut p| {
                p.budget_bytes /= slots as u64;
                p
            });
            let ctx = SlotCtx {
                running: running.clone(),
                in_flight: in_flight.clone(),
                abort: abort.clone(),
            };
            let h = std::thread::Builder::new()
                .name(format!("swarmlm-engine-{slot}"))
                .spawn(move || {
                    let model = Model::load(&checkpoint, threads)
                        .map_err(Box::new)
                        .and_then(|mut m| {
                            if let Some(p) = pager {
                                m.attach_pager(p).map_err(Box::new)?;
                            }
                            Ok(m)
                        });
                    let model = match model {
                        Ok(m) => {
                            let _ = ready.send(Ok(()));
                            m
                        }
                        Err(e) => {
                            let _ = ready.send(Err(e));
                            return;
                        }
                    };
                    drop(ready);
                    loop {
                        // The lock is held only while waiting for the next job: FIFO across slots.
                        let job = match rx.lock() {
                            Ok(rx) => rx.recv(),
                            Err(_) => return,
                        };
                        let Ok(job) = job else { return };
                        ctx.run(&model, &tokenizer, job);
                    }
                })
                .map_err(|e| {
                    Box::new(swarmlm_engine::EngineError::InvalidArgument {
                        name: "max_concurrent",
                        value: slots.to_string(),
                        expected: format!("a number of engine threads the system can start: {e}"),
                    })
                })?;
            handles.push(h);
        }
        drop(ready_tx);
        for _ in 0..slots {
            match ready_rx.recv() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(e),
                Err(_) => break,
            }
        }
        Ok(EnginePool {
            queue: Mutex::new(Some(tx)),
            in_flight,
            running,
            abort,
            limit: slots + config.max_queue,
            threads: Mutex::new(handles),
        })
    }

    /// Queues `job` behind the others, or refuses it when the queue is full or closed.
    pub fn submit(&self, job: Job) -> Result<(), QueueFull> {
        let prev = self.in_flight.fetch_add(1, Ordering::SeqCst);
        if prev >= self.limit {
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
            return Err(QueueFull { limit: self.limit });
        }
        let sent = match self.queue.lock() {
            Ok(q) => q.as_ref().map(|tx| tx.send(job).is_ok()).unwrap_or(false),
            Err(_) => false,
        };
        if !sent {
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
            return Err(QueueFull { limit: 0 });
        }
        Ok(())
    }

    /// Generations running now.
    pub fn running(&self) -> usize {
        self.running.load(Ordering::SeqCst)
    }

    /// Requests waiting for a slot.
    pub fn waiting(&self) -> usize {
        self.in_flight
            .load(Ordering::SeqCst)
            .saturating_sub(self.running())
    }

    /// Makes running generations stop at their next token and refuses new jobs.
    pub fn abort_all(&self) {
        self.abort.store(true, Ordering::SeqCst);
        self.close();
    }

    /// Refuses new jobs; those queued still run.
    pub fn close(&self) {
        if let Ok(mut q) = self.queue.lock() {
            q.take();
        }
    }

    /// Closes the queue and waits for the engine threads to finish their jobs.
    pub fn join(&self) {
        self.close();
        let handles = match self.threads.lock() {
            Ok(mut h) => std::mem::take(&mut *h),
            Err(_) => return,
        };
        for h in handles {
            let _ = h.join();
        }
    }
}

impl Drop for EnginePool {
    fn drop(&mut self) {
        self.abort_all();
        self.join();
    }
}

fn available_cores() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

struct SlotCtx {
    running: Arc<AtomicUsize>,
    in_flight: Arc<AtomicUsize>,
    abort: Arc<AtomicBool>,
}

impl SlotCtx {
    fn run(&self, model: &Model<'_>, tokenizer: &Tokenizer, job: Job) {
        self.running.fetch_add(1, Ordering::SeqCst);
        let events = job.events;
        if !events.is_closed() && events.send(JobEvent::Started).is_ok() {
            let result = Sampler::new(job.sampling)
                .map_err(|e| e.to_string())
                .and_then(|mut sampler| {
                    generate_cancellable(
                        model,
                        tokenizer,
                        &job.prompt_ids,
                        &job.options,
                        &mut sampler,
                        || events.is_closed() || self.abort.load(Ordering::SeqCst),
                        |text| {
                            let _ = events.send(JobEvent::Text(text.to_string()));
                        },
                    )
                    .map_err(|e| e.to_string())
                })
                .map(|g| Finished {
                    prompt_tokens: job.prompt_ids.len(),
                    completion_tokens: g.generated_ids.len(),
                    stop_reason: g.stop_reason,
                    text: g.text,
                });
            if let Ok(f) = &result {
                tracing::debug!(
                    prompt_tokens = f.prompt_tokens,
                    completion_tokens = f.completion_tokens,
                    stop = f.stop_reason.as_str(),
                    "generation finished"
                );
            }
            let _ = events.send(JobEvent::Done(result));
        }
        self.running.fetch_sub(1, Ordering::SeqCst);
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}
