//! Minimal writers for PyTorch-style checkpoints, so tests can forge `.pth` archives with exactly
//! the defect under test (and force ZIP64, which the real 87 GiB file needs but small files do
//! not get from torch).

/// One tensor as `torch.save` pickles it.
#[derive(Clone, Debug)]
pub struct PT {
    pub name: String,
    pub storage_type: &'static str,
    pub key: String,
    pub storage_numel: u64,
    pub offset: u64,
    pub size: Vec<u64>,
    pub stride: Vec<u64>,
}

fn unicode(out: &mut Vec<u8>, s: &str) {
    out.push(b'X');
    out.extend_from_slice(&(s.len() as u32).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn int(out: &mut Vec<u8>, v: u64) {
    if v < 256 {
        out.extend_from_slice(&[b'K', v as u8]);
    } else if v < 65536 {
        out.push(b'M');
        out.extend_from_slice(&(v as u16).to_le_bytes());
    } else {
        out.extend_from_slice(&[0x8a, 8]);
        out.extend_from_slice(&v.to_le_bytes());
    }
}

fn global(out: &mut Vec<u8>, module: &str, name: &str) {
    out.push(b'c');
    out.extend_from_slice(format!("{module}\n{name}\n").as_bytes());
}

/// The pickle torch writes for an OrderedDict of tensors (protocol 2), without memoization.
pub fn state_dict_pickle(ts: &[PT]) -> Vec<u8> {
    let mut o = vec![0x80, 2];
    global(&mut o, "collections", "OrderedDict");
    o.extend_from_slice(b")R(");
    for t in ts {
        unicode(&mut o, &t.name);
        global(&mut o, "torch._utils", "_rebuild_tensor_v2");
        o.extend_from_slice(b"((");
        unicode(&mut o, "storage");
        global(&mut o, "torch", t.storage_type);
        unicode(&mut o, &t.key);
        unicode(&mut o, "cpu");
        int(&mut o, t.storage_numel);
        o.extend_from_slice(b"tQ");
        int(&mut o, t.offset);
        o.push(b'(');
        for &d in &t.size {
            int(&mut o, d);
        }
        o.push(b't');
        o.push(b'(');
        for &d in &t.stride {
            int(&mut o, d);
        }
        o.push(b't');
        o.push(0x89);
        global(&mut o, "collections", "OrderedDict");
        o.extend_from_slice(b")RtR");
    }
    o.extend_from_slice(b"u.");
    o
}

pub struct ZipOpts {
    pub zip64: bool,
    /// Entry data alignment (torch uses 64); 1 for none.
    pub align: u64,
    /// Compression method written for every entry (0 = stored).
    pub method: u16,
    /// Extra bytes inserted before each local header, to misalign data when `align` is 1.
    pub skew: usize,
}

impl Default for ZipOpts {
    fn default() -> Self {
        ZipOpts {
            zip64: false,
            align: 64,
            method: 0,
            skew: 0,
        }
    }
}

/// A zip archive of stored entries, laid out like torch's writer (data aligned via padding in
/// the local header's extra field).
pub fn zip(entries: &[(String, Vec<u8>)], opts: &ZipOpts) -> Vec<u8> {
    let mut out = Vec::new();
    let mut central = Vec::new();
    for (name, data) in entries {
        out.extend(std::iter::repeat_n(0u8, opts.skew));
        let off = out.len() as u64;
        let mut extra = Vec::new();
        if opts.zip64 {
            extra.extend_from_slice(&1u16.to_le_bytes());
            extra.extend_from_slice(&16u16.to_le_bytes());
            extra.extend_from_slice(&(data.len() as u64).to_le_bytes());
            extra.extend_from_slice(&(data.len() as u64).to_le_bytes());
        }
        if opts.align > 1 {
            let before = off + 30 + name.len() as u64 + extra.len() as u64 + 4;
            let pad = (opts.align - before % opts.align) % opts.align;
            extra.extend_from_slice(&0x4246u16.to_le_bytes());
            extra.extend_from_slice(&(pad as u16).to_le_bytes());
            extra.extend(std::iter::repeat_n(b'Z', pad as usize));
        }
        let size32 = if opts.zip64 {
            u32::MAX
        } else {
            data.len() as u32
        };
        out.extend_from_slice(&0x0403_4b50u32.to_le_bytes());
        out.extend_from_slice(&[45, 0, 0, 0]);
        out.extend_from_slice(&opts.method.to_le_bytes());
        out.extend_from_slice(&[0, 0, 0x21, 0]);
        out.extend_from_slice(&0u32.to_le_bytes());
        out.extend_from_slice(&size32.to_le_bytes());
        out.extend_from_slice(&size32.to_le_bytes());
        out.extend_from_slice(&(name.len() as u16).to_le_bytes());
        out.extend_from_slice(&(extra.len() as u16).to_le_bytes());
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(&extra);
        out.extend_from_slice(data);

        let mut cextra = Vec::new();
        if opts.zip64 {
            cextra.extend_from_slice(&1u16.to_le_bytes());
            cextra.extend_from_slice(&24u16.to_le_bytes());
            cextra.extend_from_slice(&(data.len() as u64).to_le_bytes());
            cextra.extend_from_slice(&(data.len() as u64).to_le_bytes());
            cextra.extend_from_slice(&off.to_le_bytes());
        }
        central.extend_from_slice(&0x0201_4b50u32.to_le_bytes());
        central.extend_from_slice(&[45, 3, 45, 0, 0, 0]);
        central.extend_from_slice(&opts.method.to_le_bytes());
        central.extend_from_slice(&[0, 0, 0x21, 0]);
        central.extend_from_slice(&0u32.to_le_bytes());
        central.extend_from_slice(&size32.to_le_bytes());
        central.extend_from_slice(&size32.to_le_bytes());
        central.extend_from_slice(&(name.len() as u16).to_le_bytes());
        central.extend_from_slice(&(cextra.len() as u16).to_le_bytes());
        // comment length, disk number, internal attributes; then external attributes.
        central.extend_from_slice(&[0; 6]);
        central.extend_from_slice(&0u32.to_le_bytes());
        let off32 = if opts.zip64 { u32::MAX } else { off as u32 };
        central.extend_from_slice(&off32.to_le_bytes());
        central.extend_from_slice(name.as_bytes());
        central.extend_from_slice(&cextra);
    }
    let cd_off = out.len() as u64;
    let cd_size = central.len() as u64;
    out.extend_from_slice(&central);
    let n = entries.len() as u64;
    if opts.zip64 {
        let rec = out.len() as u64;
        out.extend_from_slice(&0x0606_4b50u32.to_le_bytes());
        out.extend_from_slice(&44u64.to_le_bytes());
        out.extend_from_slice(&[45, 3, 45, 0]);
        out.extend_from_slice(&[0; 8]);
        out.extend_from_slice(&n.to_le_bytes());
        out.extend_from_slice(&n.to_le_bytes());
        out.extend_from_slice(&cd_size.to_le_bytes());
        out.extend_from_slice(&cd_off.to_le_bytes());
        out.extend_from_slice(&0x0706_4b50u32.to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        out.extend_from_slice(&rec.to_le_bytes());
        out.extend_from_slice(&1u32.to_le_bytes());
    }
    out.extend_from_slice(&0x0605_4b50u32.to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    let (n16, size32, off32) = if opts.zip64 {
        (u16::MAX, u32::MAX, u32::MAX)
    } else {
        (n as u16, cd_size as u32, cd_off as u32)
    };
    out.extend_from_slice(&n16.to_le_bytes());
    out.extend_from_slice(&n16.to_le_bytes());
    out.extend_from_slice(&size32.to_le_bytes());
    out.extend_from_slice(&off32.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out
}

/// A complete torch-style archive: `archive/data.pkl`, `archive/byteorder`, `archive/data/<key>`.
pub fn pth_archive(ts: &[PT], storages: &[(String, Vec<u8>)], opts: &ZipOpts) -> Vec<u8> {
    let mut entries = vec![
        ("archive/data.pkl".to_string(), state_dict_pickle(ts)),
        ("archive/byteorder".to_string(), b"little".to_vec()),
    ];
    for (k, b) in storages {
        entries.push((format!("archive/data/{k}"), b.clone()));
    }
    entries.push(("archive/version".to_string(), b"3\n".to_vec()));
    zip(&entries, opts)
}
