//! The crypto provider behind [`jsonwebtoken`]: RustCrypto for everything, except that
//! RSA signatures (RS256/384/512, PS256/384/512) are checked with `ring` first.
//!
//! The RustCrypto `rsa` crate's big-number arithmetic made one RS256 check cost about
//! as much as the rest of a mint together (the upstream's access token is verified on
//! every mint). `ring` (already built for rustls) checks the same signature an order of
//! magnitude faster. It accepts a subset of what `rsa` accepts (2048–8192-bit keys,
//! minimal encodings), so a signature `ring` refuses is checked again with `rsa`: the
//! set of accepted tokens is exactly what it was, and only tokens that would be refused
//! anyway (or keys `ring` does not take) pay for the slow check.

use std::sync::{LazyLock, Once};

use jsonwebtoken::crypto::{rust_crypto, CryptoProvider, JwtSigner, JwtVerifier};
use jsonwebtoken::errors::Result;
use jsonwebtoken::signature::{self, Verifier};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, DecodingKeyKind, EncodingKey};
use ring::signature::{self as ring_sig, RsaParameters, RsaPublicKeyComponents};

static PROVIDER: LazyLock<CryptoProvider> = LazyLock::new(|| CryptoProvider {
    signer_factory: new_signer,
    verifier_factory: new_verifier,
    jwk_utils: rust_crypto::DEFAULT_PROVIDER.jwk_utils.clone(),
});

/// Makes this the process's provider. Call before the first JWT is signed or checked
/// (a later call keeps whichever provider was chosen first; both give the same answers).
pub fn install() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = PROVIDER.install_default();
    });
}

fn new_signer(algorithm: &Algorithm, key: &EncodingKey) -> Result<Box<dyn JwtSigner>> {
    (rust_crypto::DEFAULT_PROVIDER.signer_factory)(algorithm, key)
}

fn new_verifier(algorithm: &Algorithm, key: &DecodingKey) -> Result<Box<dyn JwtVerifier>> {
    // The RustCrypto verifier also checks that the key suits the algorithm.
    let fallback = (rust_crypto::DEFAULT_PROVIDER.verifier_factory)(algorithm, key)?;
    match ring_rsa_params(*algorithm) {
        Some(params) if key.family() == AlgorithmFamily::Rsa => Ok(Box::new(RingRsa {
            params,
            key: key.clone(),
            fallback,
        })),
        _ => Ok(fallback),
    }
}

fn ring_rsa_params(algorithm: Algorithm) -> Option<&'static RsaParameters> {
    Some(match algorithm {
        Algorithm::RS256 => &ring_sig::RSA_PKCS1_2048_8192_SHA256,
        Algorithm::RS384 => &ring_sig::RSA_PKCS1_2048_8192_SHA384,
        Algorithm::RS512 => &ring_sig::RSA_PKCS1_2048_8192_SHA512,
        Algorithm::PS256 => &ring_sig::RSA_PSS_2048_8192_SHA256,
        Algorithm::PS384 => &ring_sig::RSA_PSS_2048_8192_SHA384,
        Algorithm::PS512 => &ring_sig::RSA_PSS_2048_8192_SHA512,
        _ => return None,
    })
}

struct RingRsa {
    params: &'static RsaParameters,
    key: DecodingKey,
    fallback: Box<dyn JwtVerifier>,
}

impl RingRsa {
    fn ring_verify(&self, msg: &[u8], sig: &[u8]) -> bool {
        match self.key.kind() {
            // PKCS#1 RSAPublicKey DER, as `DecodingKey::from_rsa_pem`/`_der` keep it.
            DecodingKeyKind::SecretOrDer(der) => ring_sig::UnparsedPublicKey::new(self.params, der)
                .verify(msg, sig)
                .is_ok(),
            DecodingKeyKind::RsaModulusExponent { n, e } => RsaPublicKeyComponents {
                n: strip_zeros(n),
                e: strip_zeros(e),
            }
            .verify(self.params, msg, sig)
            .is_ok(),
        }
    }
}

fn strip_zeros(b: &[u8]) -> &[u8] {
    let first = b.iter().position(|x| *x != 0).unwrap_or(b.len());
    &b[first..]
}

impl Verifier<Vec<u8>> for RingRsa {
    fn verify(&self, msg: &[u8], sig: &Vec<u8>) -> std::result::Result<(), signature::Error> {
        if self.ring_verify(msg, sig) {
            return Ok(());
        }
        self.fallback.verify(msg, sig)
    }
}

impl JwtVerifier for RingRsa {
    fn algorithm(&self) -> Algorithm {
        self.fallback.algorithm()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::crypto::{sign, verify};
    use rsa::pkcs1::EncodeRsaPrivateKey;
    use rsa::traits::PublicKeyParts;

    fn keys(bits: usize) -> (EncodingKey, DecodingKey, DecodingKey) {
        let private = rsa::RsaPrivateKey::new(&mut rand::thread_rng(), bits).expect("key");
        let der = private.to_pkcs1_der().expect("der");
        let public = private.to_public_key();
        let pkcs1 = rsa::pkcs1::EncodeRsaPublicKey::to_pkcs1_der(&public).expect("der");
        (
            EncodingKey::from_rsa_der(der.as_bytes()),
            DecodingKey::from_rsa_der(pkcs1.as_bytes()),
            DecodingKey::from_rsa_raw_components(
                &public.n().to_bytes_be(),
                &public.e().to_bytes_be(),
            ),
        )
    }

    /// Every RSA algorithm, both key shapes: a good signature passes the ring check
    /// itself; a changed message or signature is refused by both checks.
    #[test]
    fn ring_checks_every_rsa_algorithm_and_refuses_tampering() {
        install();
        let (enc, der, parts) = keys(2048);
        for alg in [
            Algorithm::RS256,
            Algorithm::RS384,
            Algorithm::RS512,
            Algorithm::PS256,
            Algorithm::PS384,
            Algorithm::PS512,
        ] {
            let sig = sign(b"header.claims", &enc, alg).expect("sign");
            for key in [&der, &parts] {
                let v = RingRsa {
                    params: ring_rsa_params(alg).expect("rsa"),
                    key: key.clone(),
                    fallback: (rust_crypto::DEFAULT_PROVIDER.verifier_factory)(&alg, key)
                        .expect("verifier"),
                };
                let bytes = base64_decode(&sig);
                assert!(v.ring_verify(b"header.claims", &bytes), "{alg:?}");
                assert!(verify(&sig, b"header.claims", key, alg).expect("verify"));
                assert!(!verify(&sig, b"header.claimz", key, alg).expect("verify"));
                let mut bad = bytes.clone();
                bad[10] ^= 1;
                assert!(!v.ring_verify(b"header.claims", &bad));
                assert!(v.verify(b"header.claims", &bad).is_err());
            }
        }
    }

    /// A key ring does not take (under 2048 bits) is still checked, by RustCrypto.
    #[test]
    fn small_keys_fall_back_to_rustcrypto() {
        install();
        let (enc, der, parts) = keys(1024);
        let sig = sign(b"m", &enc, Algorithm::RS256).expect("sign");
        for key in [&der, &parts] {
            assert!(verify(&sig, b"m", key, Algorithm::RS256).expect("verify"));
            assert!(!verify(&sig, b"n", key, Algorithm::RS256).expect("verify"));
        }
    }

    fn base64_decode(s: &str) -> Vec<u8> {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(s)
            .expect("base64")
    }
}
