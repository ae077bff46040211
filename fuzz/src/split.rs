//! Byte streams cut at the points a fuzz input chooses.

/// Reads the cutting instructions at the start of `data`: one byte `k`, then `k % 32` chunk
/// sizes of one byte each (a byte `b` is a chunk of `b + 1` bytes). Returns the sizes and
/// the rest of `data`, the stream to cut.
pub fn sizes(data: &[u8]) -> (Vec<usize>, &[u8]) {
    let Some((&k, rest)) = data.split_first() else {
        return (Vec::new(), data);
    };
    let k = usize::from(k % 32).min(rest.len());
    let (sizes, stream) = rest.split_at(k);
    (sizes.iter().map(|&b| usize::from(b) + 1).collect(), stream)
}

/// Cuts `stream` into chunks of `sizes`, used in turn and again from the first until the
/// stream is used up; one chunk, the whole stream, when `sizes` is empty.
pub fn cut<'a>(stream: &'a [u8], sizes: &[usize]) -> Vec<&'a [u8]> {
    if sizes.is_empty() {
        return vec![stream];
    }
    let mut chunks = Vec::new();
    let mut rest = stream;
    for &size in sizes.iter().cycle() {
        if rest.is_empty() {
            break;
        }
        let (chunk, tail) = rest.split_at(size.min(rest.len()));
        chunks.push(chunk);
        rest = tail;
    }
    chunks
}

/// The bytes that make [`sizes`] return `sizes` (each at most 256, at most 31 of them)
/// followed by `stream`: how the stable drivers build inputs.
pub fn encode(sizes: &[usize], stream: &[u8]) -> Vec<u8> {
    let sizes = &sizes[..sizes.len().min(31)];
    let mut out = Vec::with_capacity(1 + sizes.len() + stream.len());
    out.push(sizes.len() as u8);
    out.extend(sizes.iter().map(|&s| (s.clamp(1, 256) - 1) as u8));
    out.extend_from_slice(stream);
    out
}
