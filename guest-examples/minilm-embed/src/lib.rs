//! all-MiniLM-L6-v2 sentence embeddings, computed in the guest on
//! `kasbah:gpu` kernels (the SDK's tensor toolkit).
//!
//! Input (JSON): a list of sentences, or an object
//! `{"sentences": [...], "model": "/datasets/model.safetensors",
//!   "vocab": "/datasets/vocab.txt", "return_ids": false, "profile": false,
//!   "max_batch_tokens": 8192}`, or `{"selftest": true}` to check every op
//! of the SDK's tensor toolkit against CPU code (no model needed).
//! The weights and vocabulary are read from the read-only `/datasets`
//! directory by default (a preopen, or a dataset mounted there).
//!
//! Pipeline: BERT WordPiece tokenization in the guest (`[CLS] … [SEP]`,
//! truncated to 256 tokens as sentence-transformers does) → sentences sorted
//! by length and grouped into padded batches (little padding, at most
//! `max_batch_tokens` tokens each) → embeddings + layer norm → 6 encoder
//! layers (fused QKV projection, attention with the padding mask, output
//! projection + residual, layer norm, GELU feed-forward + residual, layer
//! norm) → mean pooling over the mask → L2 normalization. Each batch is one
//! GPU submission; only the pooled embeddings are read back.
//!
//! Output (JSON): `{"dim", "embeddings": [[f32; dim]], "tokens": [n],
//! "ids"?: [[u32]], "batches", "adapter", "timings": {phase: ms},
//! "ops"?: {kind: {"count", "ms"}}}`. `profile` submits every kernel on its
//! own and times it, to show where GPU time goes.

mod selftest;

use std::collections::BTreeMap;
use std::time::Instant;

use kasbah_bert_tokenizer::Tokenizer;
use kasbah_sdk::gpu::{self, Buffer};
use kasbah_sdk::tensor::{Epilogue, OpTiming, Ops, Recorder, SafeTensors, Tensor};
use kasbah_sdk::{Error, Pipeline, Request, Response, log};
use serde::{Deserialize, Serialize};

/// Where the weights and vocabulary are by default (the datasets mount).
pub const DEFAULT_MODEL: &str = "/datasets/model.safetensors";
pub const DEFAULT_VOCAB: &str = "/datasets/vocab.txt";
/// sentence-transformers' `max_seq_length` for this model.
const MAX_SEQ: usize = 256;
const HEADS: usize = 12;
const LAYER_NORM_EPS: f32 = 1e-12;
const MAX_SENTENCES: usize = 4096;

#[derive(Deserialize)]
#[serde(untagged)]
enum Input {
    List(Vec<String>),
    Object(Options),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Options {
    #[serde(default)]
    sentences: Vec<String>,
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    vocab: Option<String>,
    #[serde(default)]
    return_ids: bool,
    #[serde(default)]
    profile: bool,
    #[serde(default)]
    max_batch_tokens: Option<usize>,
    /// Check every op of the tensor toolkit against the CPU instead.
    #[serde(default)]
    selftest: bool,
}

#[derive(Serialize)]
struct OpMs {
    count: u64,
    ms: f64,
}

#[derive(Serialize)]
struct Output {
    dim: usize,
    embeddings: Vec<Vec<f32>>,
    tokens: Vec<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ids: Option<Vec<Vec<u32>>>,
    batches: Vec<[usize; 2]>,
    adapter: String,
    timings: BTreeMap<&'static str, f64>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    ops: BTreeMap<&'static str, OpMs>,
    dispatches: u64,
    kernels: u32,
}

struct Layer {
    qkv_w: Tensor,
    qkv_b: Tensor,
    o_w: Tensor,
    o_b: Tensor,
    ln1_g: Tensor,
    ln1_b: Tensor,
    i_w: Tensor,
    i_b: Tensor,
    out_w: Tensor,
    out_b: Tensor,
    ln2_g: Tensor,
    ln2_b: Tensor,
}

struct Model {
    word: Tensor,
    pos: Tensor,
    typ: Tensor,
    ln_g: Tensor,
    ln_b: Tensor,
    layers: Vec<Layer>,
    hidden: usize,
}

fn failed(e: impl std::fmt::Display) -> Error {
    Error::failed(e.to_string())
}

impl Model {
    /// Upload every weight of a BERT encoder (the names Hugging Face
    /// `BertModel` uses) from a safetensors file.
    fn load(path: &str) -> Result<Model, Error> {
        let mut st = SafeTensors::open(path)
            .map_err(|e| Error::invalid_input(format!("model {path}: {}", e.message())))?;
        let mut layers = Vec::new();
        while st.tensors().contains_key(&format!(
            "encoder.layer.{}.output.dense.weight",
            layers.len()
        )) {
            let p = format!("encoder.layer.{}.", layers.len());
            let n = |s: &str| format!("{p}{s}");
            let a = "attention.self.";
            layers.push(Layer {
                qkv_w: st.upload_concat(&[
                    &n(&format!("{a}query.weight")),
                    &n(&format!("{a}key.weight")),
                    &n(&format!("{a}value.weight")),
                ])?,
                qkv_b: st.upload_concat(&[
                    &n(&format!("{a}query.bias")),
                    &n(&format!("{a}key.bias")),
                    &n(&format!("{a}value.bias")),
                ])?,
                o_w: st.upload(&n("attention.output.dense.weight"))?,
                o_b: st.upload(&n("attention.output.dense.bias"))?,
                ln1_g: st.upload(&n("attention.output.LayerNorm.weight"))?,
                ln1_b: st.upload(&n("attention.output.LayerNorm.bias"))?,
                i_w: st.upload(&n("intermediate.dense.weight"))?,
                i_b: st.upload(&n("intermediate.dense.bias"))?,
                out_w: st.upload(&n("output.dense.weight"))?,
                out_b: st.upload(&n("output.dense.bias"))?,
                ln2_g: st.upload(&n("output.LayerNorm.weight"))?,
                ln2_b: st.upload(&n("output.LayerNorm.bias"))?,
            });
        }
        if layers.is_empty() {
            return Err(Error::invalid_input(format!(
                "model {path}: no encoder layers (encoder.layer.0.*)"
            )));
        }
        let word = st.upload("embeddings.word_embeddings.weight")?;
        let hidden = word.cols();
        if hidden % (4 * HEADS) != 0 {
            return Err(Error::invalid_input(format!(
                "model {path}: hidden size {hidden} does not split into {HEADS} heads"
            )));
        }
        let model = Model {
            pos: st.upload("embeddings.position_embeddings.weight")?,
            typ: st.upload("embeddings.token_type_embeddings.weight")?,
            ln_g: st.upload("embeddings.LayerNorm.weight")?,
            ln_b: st.upload("embeddings.LayerNorm.bias")?,
            word,
            layers,
            hidden,
        };
        // The fused QKV weights, assembled on the GPU in one submission.
        st.finish()?;
        Ok(model)
    }

    /// Embeddings of one padded batch: `ids` holds `batch` sequences of
    /// `seq` ids (padding after each sentence's `lens[b]` tokens). Returns
    /// `batch × hidden` floats.
    fn embed_batch(
        &self,
        ops: &Ops,
        rec: &mut Recorder,
        ids: &Buffer,
        lens: &Buffer,
        batch: usize,
        seq: usize,
    ) -> Result<Tensor, Error> {
        let h = self.hidden;
        let rows = batch * seq;
        let x = Tensor::zeros(&[rows, h])?;
        let h1 = Tensor::zeros(&[rows, h])?;
        let ctx = Tensor::zeros(&[rows, h])?;
        let qkv = Tensor::zeros(&[rows, 3 * h])?;
        let inter = Tensor::zeros(&[rows, self.layers[0].i_w.shape()[0]])?;
        let pooled = Tensor::zeros(&[batch, h])?;
        ops.embed(rec, ids, &self.word, &self.pos, &self.typ, &x, seq)?;
        ops.layer_norm(rec, &x, &self.ln_g, &self.ln_b, LAYER_NORM_EPS)?;
        for l in &self.layers {
            ops.linear(rec, &x, &l.qkv_w, &l.qkv_b, &qkv, Epilogue::None)?;
            ops.attention(rec, &qkv, lens, &ctx, seq, HEADS)?;
            ops.linear(rec, &ctx, &l.o_w, &l.o_b, &h1, Epilogue::Residual(&x))?;
            ops.layer_norm(rec, &h1, &l.ln1_g, &l.ln1_b, LAYER_NORM_EPS)?;
            ops.linear(rec, &h1, &l.i_w, &l.i_b, &inter, Epilogue::Gelu)?;
            ops.linear(rec, &inter, &l.out_w, &l.out_b, &x, Epilogue::Residual(&h1))?;
            ops.layer_norm(rec, &x, &l.ln2_g, &l.ln2_b, LAYER_NORM_EPS)?;
        }
        ops.mean_pool(rec, &x, lens, &pooled, seq)?;
        ops.l2_normalize(rec, &pooled)?;
        for t in [x, h1, ctx, qkv, inter] {
            rec.keep(t);
        }
        Ok(pooled)
    }
}

/// Group sentence indices (by decreasing token count) into batches padded
/// to their longest member: a batch grows while its padded size stays
/// within `max_tokens` and within 25% of its real tokens (plus one row), so
/// a long sentence does not make a batch of short ones pay for its length.
pub fn plan_batches(lens: &[usize], max_tokens: usize) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..lens.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(lens[i]));
    let mut batches: Vec<Vec<usize>> = Vec::new();
    let mut real = 0usize;
    for i in order {
        if let Some(cur) = batches.last_mut() {
            let seq = lens[cur[0]];
            let padded = (cur.len() + 1) * seq;
            if padded <= max_tokens && padded * 4 <= (real + lens[i]) * 5 + 4 * seq {
                cur.push(i);
                real += lens[i];
                continue;
            }
        }
        batches.push(vec![i]);
        real = lens[i];
    }
    batches
}

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1e3
}

struct Embed;

impl Pipeline for Embed {
    fn run(request: Request) -> Result<Response, Error> {
        let input: Input = serde_json::from_slice(&request.body).map_err(|e| {
            Error::invalid_input(format!(
                "expected a JSON list of sentences or {{\"sentences\": [...]}}: {e}"
            ))
        })?;
        let opts = match input {
            Input::List(sentences) => Options {
                sentences,
                model: None,
                vocab: None,
                return_ids: false,
                profile: false,
                max_batch_tokens: None,
                selftest: false,
            },
            Input::Object(o) => o,
        };
        if opts.selftest {
            let errs = selftest::run()?;
            let body =
                serde_json::to_vec(&serde_json::json!({ "selftest": errs })).map_err(failed)?;
            return Ok(Response::bytes("application/json", body));
        }
        if opts.sentences.len() > MAX_SENTENCES {
            return Err(Error::invalid_input(format!(
                "at most {MAX_SENTENCES} sentences per request"
            )));
        }
        let max_tokens = opts.max_batch_tokens.unwrap_or(32 * MAX_SEQ).max(MAX_SEQ);
        let mut timings = BTreeMap::new();
        let start = Instant::now();

        let t = Instant::now();
        let vocab_path = opts.vocab.as_deref().unwrap_or(DEFAULT_VOCAB);
        let vocab = std::fs::read_to_string(vocab_path)
            .map_err(|e| Error::invalid_input(format!("vocabulary {vocab_path}: {e}")))?;
        let tokenizer = Tokenizer::from_vocab(&vocab)
            .map_err(|e| Error::invalid_input(format!("vocabulary {vocab_path}: {e}")))?;
        timings.insert("load_vocab", ms(t));

        let t = Instant::now();
        let ids: Vec<Vec<u32>> = opts
            .sentences
            .iter()
            .map(|s| tokenizer.encode(s, MAX_SEQ))
            .collect();
        timings.insert("tokenize", ms(t));

        let info = gpu::adapter()?;
        let t = Instant::now();
        let model = Model::load(opts.model.as_deref().unwrap_or(DEFAULT_MODEL))?;
        timings.insert("load_weights", ms(t));

        let lens: Vec<usize> = ids.iter().map(Vec::len).collect();
        let plan = plan_batches(&lens, max_tokens);
        let ops = Ops::new();
        let mut embeddings = vec![Vec::new(); ids.len()];
        let mut batches = Vec::new();
        let mut op_times: BTreeMap<&'static str, OpTiming> = BTreeMap::new();
        let (mut upload, mut forward, mut readback) = (0.0, 0.0, 0.0);
        let mut dispatches = 0;
        for members in &plan {
            let seq = lens[members[0]];
            let batch = members.len();
            let t = Instant::now();
            let mut flat = vec![tokenizer.pad_id(); batch * seq];
            for (b, &i) in members.iter().enumerate() {
                flat[b * seq..b * seq + lens[i]].copy_from_slice(&ids[i]);
            }
            let lens_b: Vec<u32> = members.iter().map(|&i| lens[i] as u32).collect();
            let ids_buf = Buffer::from_slice(&flat)?;
            let lens_buf = Buffer::from_slice(&lens_b)?;
            upload += ms(t);

            let t = Instant::now();
            let mut rec = Recorder::new(opts.profile)?;
            let pooled = model.embed_batch(&ops, &mut rec, &ids_buf, &lens_buf, batch, seq)?;
            dispatches += rec.dispatches();
            for (k, v) in rec.submit()? {
                let e = op_times.entry(k).or_default();
                e.count += v.count;
                e.total += v.total;
            }
            forward += ms(t);

            let t = Instant::now();
            let out = pooled.read()?;
            readback += ms(t);
            for (b, &i) in members.iter().enumerate() {
                embeddings[i] = out[b * model.hidden..(b + 1) * model.hidden].to_vec();
            }
            batches.push([batch, seq]);
        }
        // Kernels compile on first use, inside the first batch's forward.
        let (kernels, compile) = ops.compile_stats();
        timings.insert("compile_kernels", compile.as_secs_f64() * 1e3);
        timings.insert("upload_inputs", upload);
        timings.insert("gpu_forward", forward);
        timings.insert("readback", readback);
        timings.insert("total", ms(start));
        log::info(&format!(
            "minilm-embed: {} sentences in {} batches on {} ({}), {:.1} ms",
            ids.len(),
            plan.len(),
            info.label,
            info.zone,
            ms(start)
        ));
        let out = Output {
            dim: model.hidden,
            embeddings,
            tokens: lens,
            ids: opts.return_ids.then_some(ids),
            batches,
            adapter: info.label,
            timings,
            ops: op_times
                .into_iter()
                .map(|(k, v)| {
                    (
                        k,
                        OpMs {
                            count: v.count,
                            ms: v.total.as_secs_f64() * 1e3,
                        },
                    )
                })
                .collect(),
            dispatches,
            kernels,
        };
        let body = serde_json::to_vec(&out).map_err(failed)?;
        Ok(Response::bytes("application/json", body))
    }
}

kasbah_sdk::export!(Embed);
