//! Loading a tokenizer and encoding texts.

use crate::{Result, TokenizeError};
use rayon::prelude::*;
use std::path::{Path, PathBuf};
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::BPE;
use tokenizers::models::wordpiece::WordPiece;
use tokenizers::normalizers::bert::BertNormalizer;
use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::processors::roberta::RobertaProcessing;
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{
    DecoderWrapper, ModelWrapper, NormalizerWrapper, PostProcessorWrapper, PreTokenizerWrapper,
    Tokenizer, TokenizerBuilder, TruncationDirection, TruncationParams, TruncationStrategy,
};

type Builder = TokenizerBuilder<
    ModelWrapper,
    NormalizerWrapper,
    PreTokenizerWrapper,
    PostProcessorWrapper,
    DecoderWrapper,
>;

/// The model family, which decides the special tokens and the pad token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    /// GPT-2: byte-level BPE, no BOS/EOS added, pad = eos (`<|endoftext|>`).
    Gpt2,
    /// RoBERTa: byte-level BPE, `<s> … </s>`, pad `<pad>`.
    Roberta,
    /// BERT: WordPiece, `[CLS] … [SEP]`, pad `[PAD]`.
    Bert,
    /// The Llama family (Llama, Qwen2, Mistral): the checkpoint's `tokenizer.json` with its own
    /// template (Llama's BOS), pad = `tokenizer_config.json`'s `pad_token`, else its `eos_token`
    /// (what transformers users set for these models).
    Llama,
}

impl std::fmt::Display for Family {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Family::Gpt2 => "gpt2",
            Family::Roberta => "roberta",
            Family::Bert => "bert",
            Family::Llama => "llama",
        })
    }
}

impl Family {
    /// The family of an HF `model_type` (`gpt2`, `roberta`, `bert`, and close relatives).
    pub fn from_model_type(model_type: &str) -> Option<Self> {
        match model_type {
            "gpt2" => Some(Family::Gpt2),
            "roberta" | "xlm-roberta" | "camembert" => Some(Family::Roberta),
            // ModernBERT's tokenizer.json is BPE and DeBERTa-v3's SentencePiece, but their
            // specials are BERT's: [CLS] … [SEP], [PAD].
            "bert" | "distilbert" | "modernbert" | "deberta-v2" => Some(Family::Bert),
            "llama" | "qwen2" | "mistral" => Some(Family::Llama),
            _ => None,
        }
    }

    fn default_pad_token(self) -> &'static str {
        match self {
            Family::Gpt2 => "<|endoftext|>",
            Family::Roberta => "<pad>",
            Family::Bert => "[PAD]",
            Family::Llama => "</s>",
        }
    }
}

/// How long an encoded text may be (special tokens included), like `truncation=True,
/// max_length=N` in transformers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Truncation {
    /// No truncation.
    None,
    /// Keep at most this many tokens, special tokens included.
    MaxLength(usize),
}

/// A tokenizer for one model family: ids with the family's special tokens, truncated, unpadded.
#[derive(Debug, Clone)]
pub struct TextTokenizer {
    inner: Tokenizer,
    family: Family,
    pad_id: u32,
    truncation: Truncation,
    source: PathBuf,
}

fn file_err(path: &Path, message: impl ToString) -> TokenizeError {
    TokenizeError::File {
        path: path.to_path_buf(),
        message: message.to_string(),
    }
}

/// `Tokenizer::from_file`, whose deserialisers still `expect` on some malformed parts (found by
/// fuzzing): a panic there is an error naming the file too.
fn load_tokenizer_json(path: &Path) -> Result<Tokenizer> {
    peftkit_guard::contain(|| Tokenizer::from_file(path))
        .map_err(|panic| file_err(path, format!("malformed tokenizer ({panic})")))?
        .map_err(|e| file_err(path, e))
}

fn read_json(path: &Path) -> Result<Option<serde_json::Value>> {
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path).map_err(|e| file_err(path, e))?;
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| file_err(path, format!("invalid JSON: {e}")))
}

/// A token given either as a string or as `{"content": "..."}` (tokenizer_config.json style).
fn token_string(v: &serde_json::Value) -> Option<String> {
    v.as_str().map(str::to_string).or_else(|| {
        v.get("content")
            .and_then(|c| c.as_str())
            .map(str::to_string)
    })
}

impl TextTokenizer {
    /// Loads the tokenizer in a model directory (a checkpoint or a hub snapshot). The family
    /// comes from `config.json`'s `model_type` when present, otherwise from the tokenizer files.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let family = match read_json(&dir.join("config.json"))? {
            Some(cfg) => cfg
                .get("model_type")
                .and_then(|m| m.as_str())
                .and_then(Family::from_model_type),
            None => None,
        };
        Self::from_dir_with_family(dir, family)
    }

    /// Loads the tokenizer in `dir` for a given family (`None`: infer it).
    pub fn from_dir_with_family(dir: &Path, family: Option<Family>) -> Result<Self> {
        let json = dir.join("tokenizer.json");
        let (inner, source) = if json.is_file() {
            (load_tokenizer_json(&json)?, json)
        } else if dir.join("vocab.json").is_file() && dir.join("merges.txt").is_file() {
            let family = family.unwrap_or_else(|| {
                if dir.join("vocab.json").is_file()
                    && std::fs::read_to_string(dir.join("vocab.json"))
                        .is_ok_and(|v| v.contains("\"<s>\""))
                {
                    Family::Roberta
                } else {
                    Family::Gpt2
                }
            });
            (Self::build_bpe(dir, family)?, dir.to_path_buf())
        } else if dir.join("vocab.txt").is_file() {
            (Self::build_wordpiece(dir)?, dir.join("vocab.txt"))
        } else {
            return Err(TokenizeError::NoTokenizer {
                dir: dir.to_path_buf(),
            });
        };
        let family = match family {
            Some(f) => f,
            None => infer_family(&inner),
        };
        let mut pad_token = configured_token(dir, "pad_token")?;
        if pad_token.is_none() && family == Family::Llama {
            pad_token = configured_token(dir, "eos_token")?;
        }
        let pad_token = pad_token.unwrap_or_else(|| family.default_pad_token().to_string());
        Self::new(inner, family, &pad_token, source)
    }

    /// Loads a `tokenizer.json` file for a family.
    pub fn from_file(path: &Path, family: Family) -> Result<Self> {
        let inner = load_tokenizer_json(path)?;
        Self::new(
            inner,
            family,
            family.default_pad_token(),
            path.to_path_buf(),
        )
    }

    fn new(mut inner: Tokenizer, family: Family, pad_token: &str, source: PathBuf) -> Result<Self> {
        // Padding and truncation are peftkit's to decide (a tokenizer.json may carry its own).
        inner.with_padding(None);
        inner
            .with_truncation(None)
            .map_err(|e| file_err(&source, e))?;
        let pad_id =
            inner
                .token_to_id(pad_token)
                .ok_or_else(|| TokenizeError::MissingSpecialToken {
                    path: source.clone(),
                    family,
                    token: pad_token.into(),
                })?;
        let tok = Self {
            inner,
            family,
            pad_id,
            truncation: Truncation::None,
            source,
        };
        // A tokenizer.json can deserialise and still fail on every text (a template naming a
        // special token it does not define panics in `tokenizers`): find out now, naming the file.
        tok.encode("a b").map_err(|e| {
            file_err(
                &tok.source,
                format!("the tokenizer cannot encode a plain text: {e}"),
            )
        })?;
        Ok(tok)
    }

    fn build_bpe(dir: &Path, family: Family) -> Result<Tokenizer> {
        let vocab = dir.join("vocab.json");
        let merges = dir.join("merges.txt");
        let bpe = BPE::from_file(&vocab.to_string_lossy(), &merges.to_string_lossy())
            .build()
            .map_err(|e| file_err(&vocab, e))?;
        let mut builder = Builder::default()
            .with_model(bpe.into())
            .with_pre_tokenizer(Some(ByteLevel::new(false, true, true).into()))
            .with_decoder(Some(ByteLevelDecoder::default().into()));
        builder = match family {
            Family::Roberta => {
                let id = |t: &str| {
                    bpe_token_id(&vocab, t).ok_or_else(|| TokenizeError::MissingSpecialToken {
                        path: vocab.clone(),
                        family,
                        token: t.into(),
                    })
                };
                let processor = RobertaProcessing::new(
                    ("</s>".into(), id("</s>")?),
                    ("<s>".into(), id("<s>")?),
                )
                .trim_offsets(true)
                .add_prefix_space(false);
                builder.with_post_processor(Some(processor.into()))
            }
            _ => builder.with_post_processor(Some(ByteLevel::new(false, true, true).into())),
        };
        let tok: Tokenizer = builder.build().map_err(|e| file_err(&vocab, e))?.into();
        Ok(with_special_tokens(
            tok,
            &["<|endoftext|>", "<s>", "</s>", "<pad>", "<unk>", "<mask>"],
        ))
    }

    fn build_wordpiece(dir: &Path) -> Result<Tokenizer> {
        let vocab = dir.join("vocab.txt");
        let lowercase = read_json(&dir.join("tokenizer_config.json"))?
            .and_then(|c| c.get("do_lower_case").and_then(|v| v.as_bool()))
            .unwrap_or(true);
        let wp = WordPiece::from_file(&vocab.to_string_lossy())
            .unk_token("[UNK]".into())
            .build()
            .map_err(|e| file_err(&vocab, e))?;
        let ids = |t: &str| {
            wp_token_id(&vocab, t).ok_or_else(|| TokenizeError::MissingSpecialToken {
                path: vocab.clone(),
                family: Family::Bert,
                token: t.into(),
            })
        };
        let (cls, sep) = (ids("[CLS]")?, ids("[SEP]")?);
        let processor = TemplateProcessing::builder()
            .try_single("[CLS] $A [SEP]")
            .and_then(|b| b.try_pair("[CLS] $A [SEP] $B:1 [SEP]:1"))
            .map_err(|e| file_err(&vocab, e))?
            .special_tokens(vec![("[CLS]", cls), ("[SEP]", sep)])
            .build()
            .map_err(|e| file_err(&vocab, e))?;
        let tok: Tokenizer = Builder::default()
            .with_model(wp.into())
            .with_normalizer(Some(
                BertNormalizer::new(true, true, None, lowercase).into(),
            ))
            .with_pre_tokenizer(Some(BertPreTokenizer.into()))
            .with_post_processor(Some(processor.into()))
            .with_decoder(Some(
                tokenizers::decoders::wordpiece::WordPiece::default().into(),
            ))
            .build()
            .map_err(|e| file_err(&vocab, e))?
            .into();
        Ok(with_special_tokens(
            tok,
            &["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"],
        ))
    }

    /// Sets truncation.
    pub fn with_truncation(mut self, truncation: Truncation) -> Self {
        self.truncation = truncation;
        let params = match truncation {
            Truncation::None => None,
            Truncation::MaxLength(max_length) => Some(TruncationParams {
                max_length,
                strategy: TruncationStrategy::LongestFirst,
                direction: TruncationDirection::Right,
                stride: 0,
            }),
        };
        // Only fails when max_length is smaller than the special tokens; then truncate nothing.
        if self.inner.with_truncation(params).is_err() {
            self.inner.with_truncation(None).ok();
        }
        self
    }

    /// The family.
    pub fn family(&self) -> Family {
        self.family
    }

    /// The pad token id (GPT-2: the eos id 50256).
    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    /// The truncation in force.
    pub fn truncation(&self) -> Truncation {
        self.truncation
    }

    /// Vocabulary size, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The id of a token, if it is in the vocabulary.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The underlying `tokenizers` tokenizer.
    pub fn inner(&self) -> &Tokenizer {
        &self.inner
    }

    /// The file (or directory) this tokenizer was built from.
    pub fn source(&self) -> &Path {
        &self.source
    }

    /// Encodes one text: special tokens added, truncated, not padded.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        self.encode_indexed(0, text)
    }

    fn encode_indexed(&self, index: usize, text: &str) -> Result<Vec<u32>> {
        let encoded = peftkit_guard::contain(|| self.inner.encode_fast(text, true))
            .map_err(|panic| format!("the tokenizer failed ({panic})"))
            .and_then(|r| r.map_err(|e| e.to_string()));
        encoded
            .map(|e| e.get_ids().to_vec())
            .map_err(|message| TokenizeError::Encode { index, message })
    }

    /// Encodes many texts in parallel (rayon), in order.
    pub fn encode_batch(&self, texts: &[String]) -> Result<Vec<Vec<u32>>> {
        texts
            .par_iter()
            .enumerate()
            .map(|(i, t)| self.encode_indexed(i, t))
            .collect()
    }

    /// Decodes ids back to text, skipping special tokens.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner
            .decode(ids, true)
            .map_err(|e| TokenizeError::Encode {
                index: 0,
                message: e.to_string(),
            })
    }
}

fn with_special_tokens(mut tok: Tokenizer, candidates: &[&str]) -> Tokenizer {
    let present: Vec<tokenizers::AddedToken> = candidates
        .iter()
        .filter(|t| tok.token_to_id(t).is_some())
        .map(|t| tokenizers::AddedToken::from(t.to_string(), true))
        .collect();
    tok.add_special_tokens(&present);
    tok
}

fn bpe_token_id(vocab: &Path, token: &str) -> Option<u32> {
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(vocab).ok()?).ok()?;
    v.get(token)?.as_u64().map(|x| x as u32)
}

fn wp_token_id(vocab: &Path, token: &str) -> Option<u32> {
    std::fs::read_to_string(vocab)
        .ok()?
        .lines()
        .position(|l| l == token)
        .map(|p| p as u32)
}

fn infer_family(tok: &Tokenizer) -> Family {
    if tok.token_to_id("[CLS]").is_some() {
        Family::Bert
    } else if tok.token_to_id("<s>").is_some() && tok.token_to_id("<pad>").is_some() {
        Family::Roberta
    } else {
        Family::Gpt2
    }
}

/// The pad token named by `tokenizer_config.json` or `special_tokens_map.json`, if any.
/// A special token (`pad_token`, `eos_token`) as `tokenizer_config.json` or
/// `special_tokens_map.json` names it.
fn configured_token(dir: &Path, key: &str) -> Result<Option<String>> {
    for name in ["tokenizer_config.json", "special_tokens_map.json"] {
        if let Some(cfg) = read_json(&dir.join(name))? {
            if let Some(tok) = cfg.get(key).and_then(token_string) {
                return Ok(Some(tok));
            }
        }
    }
    Ok(None)
}
