//! Just enough SPIR-V reflection to check a caller's compute shader against
//! the buffers it is given: its entry point, its storage-buffer bindings in
//! descriptor set 0, and whether the shader may write each of them.
//!
//! "May write" is what the shader declares: a binding is read-only when its
//! variable, or every member of its block, is decorated `NonWritable` (GLSL
//! `readonly`). The runtime uses it to refuse, before anything runs, a
//! shader that could write into a file region mapped read-only.
use std::collections::{BTreeMap, HashMap, HashSet};

const MAGIC: u32 = 0x0723_0203;

const OP_ENTRY_POINT: u32 = 15;
const OP_TYPE_STRUCT: u32 = 30;
const OP_TYPE_POINTER: u32 = 32;
const OP_TYPE_ARRAY: u32 = 28;
const OP_TYPE_RUNTIME_ARRAY: u32 = 29;
const OP_VARIABLE: u32 = 59;
const OP_DECORATE: u32 = 71;
const OP_MEMBER_DECORATE: u32 = 72;

const DEC_BUFFER_BLOCK: u32 = 3;
const DEC_NON_WRITABLE: u32 = 24;
const DEC_BINDING: u32 = 33;
const DEC_DESCRIPTOR_SET: u32 = 34;

const SC_UNIFORM_CONSTANT: u32 = 0;
const SC_UNIFORM: u32 = 2;
const SC_STORAGE_BUFFER: u32 = 12;

const EXEC_GL_COMPUTE: u32 = 5;

/// One storage buffer the shader uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Binding {
    /// `layout(binding = N)` in set 0.
    pub binding: u32,
    /// False when the shader declares the buffer `readonly`.
    pub writes: bool,
}

/// What the runtime needs to know about a compute shader.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reflection {
    /// Name of the GLCompute entry point.
    pub entry: String,
    /// Storage buffers in set 0, by binding number.
    pub bindings: Vec<Binding>,
}

/// Converts SPIR-V bytes (little-endian words, as glslangValidator writes
/// them) to words.
pub fn words(spirv: &[u8]) -> Result<Vec<u32>, String> {
    if spirv.len() % 4 != 0 || spirv.len() < 20 {
        return Err(format!(
            "not SPIR-V: {} bytes is not a whole number of words with a header",
            spirv.len()
        ));
    }
    let w: Vec<u32> = spirv
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    if w[0] != MAGIC {
        return Err(if w[0].swap_bytes() == MAGIC {
            "big-endian SPIR-V is not supported".into()
        } else {
            format!("not SPIR-V: magic number 0x{:08x}", w[0])
        });
    }
    Ok(w)
}

fn string_literal(ops: &[u32]) -> String {
    let bytes: Vec<u8> = ops
        .iter()
        .flat_map(|w| w.to_le_bytes())
        .take_while(|&b| b != 0)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Reflects a compute shader; the error says what is not supported.
pub fn reflect(words: &[u32]) -> Result<Reflection, String> {
    let mut entry = None;
    let mut structs: HashMap<u32, usize> = HashMap::new(); // id -> member count
    let mut pointers: HashMap<u32, u32> = HashMap::new(); // id -> pointee
    let mut arrays: HashSet<u32> = HashSet::new();
    let mut vars: Vec<(u32, u32, u32)> = vec![]; // (id, pointer type, storage class)
    let mut binding: HashMap<u32, u32> = HashMap::new();
    let mut set: HashMap<u32, u32> = HashMap::new();
    let mut nonwritable: HashSet<u32> = HashSet::new();
    let mut member_nonwritable: HashMap<u32, HashSet<u32>> = HashMap::new();
    let mut buffer_block: HashSet<u32> = HashSet::new();

    let mut i = 5;
    while i < words.len() {
        let count = (words[i] >> 16) as usize;
        let op = words[i] & 0xffff;
        if count == 0 || i + count > words.len() {
            return Err(format!(
                "corrupt SPIR-V: bad instruction length at word {i}"
            ));
        }
        let o = &words[i + 1..i + count];
        match op {
            OP_ENTRY_POINT if o.len() >= 3 && o[0] == EXEC_GL_COMPUTE && entry.is_none() => {
                entry = Some(string_literal(&o[2..]));
            }
            OP_TYPE_STRUCT if !o.is_empty() => {
                structs.insert(o[0], o.len() - 1);
            }
            OP_TYPE_POINTER if o.len() == 3 => {
                pointers.insert(o[0], o[2]);
            }
            OP_TYPE_ARRAY | OP_TYPE_RUNTIME_ARRAY if !o.is_empty() => {
                arrays.insert(o[0]);
            }
            OP_VARIABLE if o.len() >= 3 => vars.push((o[1], o[0], o[2])),
            OP_DECORATE if o.len() >= 2 => match o[1] {
                DEC_BINDING if o.len() == 3 => {
                    binding.insert(o[0], o[2]);
                }
                DEC_DESCRIPTOR_SET if o.len() == 3 => {
                    set.insert(o[0], o[2]);
                }
                DEC_NON_WRITABLE => {
                    nonwritable.insert(o[0]);
                }
                DEC_BUFFER_BLOCK => {
                    buffer_block.insert(o[0]);
                }
                _ => {}
            },
            OP_MEMBER_DECORATE if o.len() >= 3 && o[2] == DEC_NON_WRITABLE => {
                member_nonwritable.entry(o[0]).or_default().insert(o[1]);
            }
            _ => {}
        }
        i += count;
    }
    let entry = entry.ok_or("the shader has no GLCompute entry point (is it a compute shader?)")?;

    let mut out: BTreeMap<u32, Binding> = BTreeMap::new();
    for (id, ptr, class) in vars {
        let Some(&b) = binding.get(&id) else {
            continue;
        };
        let s = set.get(&id).copied().unwrap_or(0);
        let pointee = pointers.get(&ptr).copied().unwrap_or(0);
        let storage = match class {
            SC_STORAGE_BUFFER => true,
            SC_UNIFORM if buffer_block.contains(&pointee) => true,
            SC_UNIFORM | SC_UNIFORM_CONSTANT => false,
            _ => continue,
        };
        if !storage {
            return Err(format!(
                "binding {b} (set {s}) is not a storage buffer; dmafile kernels take storage buffers and push constants only"
            ));
        }
        if s != 0 {
            return Err(format!(
                "binding {b} is in descriptor set {s}; dmafile kernels use set 0 only"
            ));
        }
        if arrays.contains(&pointee) || !structs.contains_key(&pointee) {
            return Err(format!(
                "binding {b} is an array of buffers; dmafile kernels bind one buffer per binding"
            ));
        }
        let members = structs[&pointee];
        let all_members_ro = member_nonwritable
            .get(&pointee)
            .is_some_and(|m| m.len() >= members);
        let writes = !(nonwritable.contains(&id) || all_members_ro);
        if out.insert(b, Binding { binding: b, writes }).is_some() {
            return Err(format!("binding {b} is declared twice"));
        }
    }
    Ok(Reflection {
        entry,
        bindings: out.into_values().collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spv(name: &str) -> Vec<u32> {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("spirv/{name}.spv"));
        words(&std::fs::read(path).unwrap()).unwrap()
    }

    #[test]
    fn bindings_and_their_access_are_found() {
        let ro = |binding| Binding {
            binding,
            writes: false,
        };
        let rw = |binding| Binding {
            binding,
            writes: true,
        };
        for (name, expect) in [
            ("crc32c", vec![ro(0), rw(1), ro(2)]),
            ("sum64", vec![ro(0), rw(1)]),
            ("histogram", vec![ro(0), rw(1)]),
            ("invert", vec![rw(0)]),
        ] {
            let r = reflect(&spv(name)).unwrap();
            assert_eq!(r.entry, "main", "{name}");
            assert_eq!(r.bindings, expect, "{name}");
        }
    }

    #[test]
    fn garbage_is_refused() {
        assert!(words(&[0u8; 7]).is_err());
        assert!(words(&[1u8; 20]).unwrap_err().contains("magic"));
        let mut w = spv("sum64");
        w[5] = 0xffff_0000 | (w[5] & 0xffff); // instruction longer than the module
        assert!(reflect(&w).unwrap_err().contains("corrupt"));
    }
}

/// SPIR-V of the shaders in shaders/, for use with [`crate::Kernel::new`].
pub mod builtin {
    /// CRC-32C per 4 KiB block (bindings: 0 input, 1 output, 2 tables; push: len).
    pub const CRC32C: &[u8] = include_bytes!("../spirv/crc32c.spv");
    /// Sum of u32 words per 4 KiB block (bindings: 0 input, 1 output; push: len).
    pub const SUM64: &[u8] = include_bytes!("../spirv/sum64.spv");
    /// 256-bin byte histogram (bindings: 0 input, 1 output; push: len).
    pub const HISTOGRAM: &[u8] = include_bytes!("../spirv/histogram.spv");
    /// Inverts words `[first, first + count)` of binding 0 in place
    /// (push: first, count; 64 invocations per workgroup).
    pub const INVERT: &[u8] = include_bytes!("../spirv/invert.spv");
}
