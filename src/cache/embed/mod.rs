//! Embedders for the semantic cache layer: text in, a unit-length vector out.

pub mod minilm;
pub mod remote;
pub mod static_model;

/// A local embedding model. Vectors are L2-normalized, so cosine is a dot product.
pub trait Embed: Send + Sync {
    fn dims(&self) -> usize;
    fn embed(&self, text: &str) -> Result<Vec<f32>, String>;
}

/// Scales `v` to unit length (a zero vector stays zero).
pub fn normalize(v: &mut [f32]) {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if n > 0.0 {
        v.iter_mut().for_each(|x| *x /= n);
    }
}
