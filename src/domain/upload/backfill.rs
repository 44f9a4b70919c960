//! Backfill: what an image stored under an earlier configuration lacks of
//! the configured renditions (a variant `--variant` added since, an
//! encoding `--variant-formats` added since, a ThumbHash), made from its
//! stored original the way the repair pass completes journaled encodings
//! (the same render slots, memory budget and decode limits), and added to
//! its record the same way: conditionally on its revision, so an edit
//! meanwhile is kept, with the `VARIANTS_ADDED` event and the new bytes
//! counted in the owner's usage.
//!
//! A new variant follows the rule of an upload's: when its rendition has
//! the dimensions of a stored one (a `large` of a photo no larger than
//! `medium`), or of an upright original no larger than it, its entries
//! read that object rather than store the same pixels again.
use super::encodings::{
    AddedToRecord, HeldPixels, largest, missing, plan, undecodable, write_object,
};
use super::render::{Original, shared_object};
use super::shared::Uploads;
use crate::domain::image::{ImageRecord, Variant};
use crate::domain::listing::ListFilter;
use crate::domain::ports::{ListPage, ObjectKey};
use crate::domain::{DomainError, VariantName};
use crate::media::variants::{Renderer, Rendition};
use crate::telemetry::error_chain;

/// What a stored image lacks of the configured renditions.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Lacking {
    /// The configured variants it has no entry of.
    pub variants: Vec<VariantName>,
    /// The encodings (`--variant-formats`) its stored renditions lack, one
    /// per rendition and encoding (those of the new variants aside).
    pub encodings: usize,
    /// Whether it has no ThumbHash.
    pub thumbhash: bool,
    /// Whether it has no PDQ hash (an image too small to hash never has
    /// one, and is rendered again only for what else it lacks).
    pub pdq: bool,
}

impl Lacking {
    /// Whether there is nothing to make.
    pub fn is_empty(&self) -> bool {
        self.variants.is_empty() && self.encodings == 0 && !self.thumbhash && !self.pdq
    }
}

/// What the backfill of one image did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Backfilled {
    /// Nothing was lacking.
    Complete,
    /// It was rendered and this was added to its record (possibly
    /// nothing: an encoding no smaller than the first is not kept).
    Added(AddedToRecord),
    /// The image was deleted meanwhile: what was written for it was
    /// removed.
    ImageGone,
    /// Its original cannot be rendered (it no longer decodes, is over a
    /// limit, or is missing): why. Nothing was changed.
    Unrenderable(String),
}

impl Uploads {
    /// A page of every user's images, from `cursor` (newest first): what
    /// a backfill walks.
    pub async fn every_image(
        &self,
        cursor: Option<&[u8]>,
        limit: usize,
    ) -> Result<ListPage, DomainError> {
        Ok(self
            .metadata
            .list(&ListFilter::default(), cursor, limit)
            .await?)
    }

    /// What `record` lacks of the renditions this service is configured
    /// to make; nothing for an image of a type that is not decoded, or
    /// when variants are off.
    pub fn lacking(&self, record: &ImageRecord) -> Lacking {
        if !self.limits.variants || !Renderer::can_render(&record.content_type) {
            return Lacking::default();
        }
        let variants = self
            .limits
            .variant_sizes
            .iter()
            .filter(|size| !record.variants.iter().any(|v| v.name.as_str() == size.name))
            .filter_map(|size| VariantName::parse(&size.name).ok())
            .collect();
        Lacking {
            variants,
            encodings: missing(record, &self.limits.encodings.background).len(),
            thumbhash: record.thumbhash.is_empty(),
            pdq: record.pdq_hash.is_empty() && hashable(record),
        }
    }

    /// Makes what `record` lacks ([`Uploads::lacking`]) from its stored
    /// original and adds it to the image's record; see the module
    /// documentation. A store's failure is an error (what was written is
    /// removed); an original that cannot be rendered is reported as
    /// [`Backfilled::Unrenderable`].
    pub async fn backfill(&self, record: &ImageRecord) -> Result<Backfilled, DomainError> {
        let lacking = self.lacking(record);
        if lacking.is_empty() {
            return Ok(Backfilled::Complete);
        }
        let stored = match self.render_stored(record).await {
            Ok(stored) => stored,
            Err(error) if undecodable(&error) => {
                return Ok(Backfilled::Unrenderable(error_chain(&error)));
            }
            // Deleted since it was listed (its owner, an erasure), or its
            // original is missing while its record stays.
            Err(DomainError::NotFound(_)) => {
                return Ok(match self.metadata.get(&record.id).await? {
                    None => Backfilled::ImageGone,
                    Some(_) => Backfilled::Unrenderable("its original is missing".into()),
                });
            }
            Err(other) => return Err(other),
        };
        let _memory = stored.memory;
        let rendered = stored.rendered;
        let upright = stored.orientation <= 1;

        // The new variants, smallest first, each sharing a stored object
        // of the same rendition or stored as its own.
        let mut with_new = record.clone();
        let mut entries = Vec::new();
        let mut written = Vec::new();
        let new_renditions = rendered
            .variants
            .iter()
            .filter(|r| lacking.variants.iter().any(|n| n.as_str() == r.name));
        for rendition in new_renditions {
            let made = match new_variant(&with_new, upright, rendition) {
                Ok(NewVariant::Shares(shared)) => shared,
                Ok(NewVariant::Stores(entry)) => {
                    let key = ObjectKey::of(&record.id, &entry.object_name());
                    match write_object(self, &key, rendition.bytes.clone()).await {
                        Ok(()) => written.push(key),
                        Err(error) => {
                            self.remove_written(&written).await;
                            return Err(error);
                        }
                    }
                    vec![entry]
                }
                Err(error) => {
                    self.remove_written(&written).await;
                    return Err(error);
                }
            };
            with_new.variants.extend(made.iter().cloned());
            entries.extend(made);
        }

        // The other encodings of every rendition, new ones included.
        let held = HeldPixels {
            pixels: rendered.pixels,
            icc: rendered.icc,
        };
        let planned = plan(&with_new, &self.limits.encodings.background, &held);
        let mut declined = Vec::new();
        if !planned.is_empty() {
            let slot = self
                .admissions
                .render_slot(&self.renderer, &record.owner, largest(&held))
                .await;
            match self.encode_planned(&record.id, planned, held, slot).await {
                Ok(encoded) => {
                    entries.extend(encoded.entries);
                    written.extend(encoded.written);
                    declined = encoded.declined;
                }
                Err(error) => {
                    self.remove_written(&written).await;
                    return Err(error);
                }
            }
        }

        let thumbhash = lacking.thumbhash.then_some(rendered.thumbhash.as_str());
        let pdq = rendered.pdq.filter(|_| lacking.pdq);
        match self
            .add_to_record(&record.id, &entries, &declined, thumbhash, pdq)
            .await
        {
            Ok(Some((_, added))) => Ok(Backfilled::Added(added)),
            Ok(None) => {
                self.remove_written(&written).await;
                Ok(Backfilled::ImageGone)
            }
            Err(error) => {
                self.remove_written(&written).await;
                Err(error)
            }
        }
    }
}

/// Whether an image of these dimensions gets a PDQ hash (see
/// [`crate::media::pdq::hash`]): a smaller one lacks none.
fn hashable(record: &ImageRecord) -> bool {
    record.width.min(record.height) >= crate::media::pdq::MIN_HASHABLE_SIDE
}

/// How a new variant is kept.
enum NewVariant {
    /// Its entries read stored objects: the entries of a variant of the
    /// same rendition (each encoding of it), or the original's.
    Shares(Vec<Variant>),
    /// It needs an object of its own: its entry, which reads the object
    /// named like it.
    Stores(Variant),
}

/// How the variant of `rendition` is added to `record` (its original
/// upright as stored when `upright`).
fn new_variant(
    record: &ImageRecord,
    upright: bool,
    rendition: &Rendition,
) -> Result<NewVariant, DomainError> {
    let variant = Variant {
        name: VariantName::parse(&rendition.name)?,
        content_type: rendition.content_type.to_owned(),
        size_bytes: rendition.bytes.len() as u64,
        width: rendition.width,
        height: rendition.height,
        object: None,
    };
    // Each rendition's first encoding, once.
    let firsts: Vec<Variant> = record
        .variants
        .iter()
        .filter(|v| v.object_name().encoding().is_none())
        .cloned()
        .collect();
    let original = upright.then_some(Original {
        content_type: &record.content_type,
        width: record.width,
        height: record.height,
        size_bytes: record.size_bytes,
    });
    let Some(shared) = shared_object(&firsts, original.as_ref(), &variant) else {
        return Ok(NewVariant::Stores(variant));
    };
    // The other encodings of the variant whose object it shares.
    let object = shared.object_name();
    let others = firsts
        .iter()
        .find(|v| v.object_name() == object && v.name != variant.name)
        .map(|source| {
            record
                .entries(&source.name)
                .filter(|v| v.object_name().encoding().is_some())
                .map(|v| Variant {
                    name: variant.name.clone(),
                    object: Some(v.object_name()),
                    ..v.clone()
                })
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    let mut shares = vec![shared];
    shares.extend(others);
    Ok(NewVariant::Shares(shares))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::image::{Encoding, ObjectName};

    fn entry(name: &str, content_type: &str, side: u32, object: Option<ObjectName>) -> Variant {
        Variant {
            name: VariantName::parse(name).unwrap(),
            content_type: content_type.into(),
            size_bytes: 100 + u64::from(side),
            width: side,
            height: side * 3 / 4,
            object,
        }
    }

    fn rendition(name: &str, side: u32, size: usize) -> Rendition {
        Rendition {
            name: name.into(),
            content_type: "image/jpeg",
            width: side,
            height: side * 3 / 4,
            bytes: vec![0; size].into(),
        }
    }

    fn photo(side: u32) -> ImageRecord {
        let mut record = ImageRecord::sample(&crate::domain::UserId::parse("alice").unwrap(), 1);
        record.content_type = "image/jpeg".into();
        record.width = side;
        record.height = side * 3 / 4;
        record.size_bytes = 1_000_000;
        let medium = side.min(1080);
        record.variants = vec![
            entry("small", "image/jpeg", 320, None),
            entry(
                "small",
                "image/webp",
                320,
                Some(ObjectName::encoded(
                    VariantName::parse("small").unwrap(),
                    Encoding::WebP,
                )),
            ),
            entry("medium", "image/jpeg", medium, None),
            entry(
                "medium",
                "image/webp",
                medium,
                Some(ObjectName::encoded(
                    VariantName::parse("medium").unwrap(),
                    Encoding::WebP,
                )),
            ),
        ];
        record
    }

    #[test]
    fn a_new_variant_larger_than_the_others_gets_its_own_object() {
        let made = new_variant(&photo(4000), true, &rendition("large", 2048, 500)).unwrap();
        let NewVariant::Stores(entry) = made else {
            panic!("stored as its own");
        };
        assert_eq!(entry.object_name().to_string(), "large");
        assert_eq!((entry.width, entry.size_bytes), (2048, 500));
    }

    #[test]
    fn a_new_variant_of_the_same_rendition_as_a_stored_one_shares_each_of_its_encodings() {
        // A 1000-pixel photo: `medium` is the photo's size, and so is `large`.
        let record = photo(1000);
        let made = new_variant(&record, true, &rendition("large", 1000, 500)).unwrap();
        let NewVariant::Shares(entries) = made else {
            panic!("shares medium's objects");
        };
        let objects: Vec<_> = entries
            .iter()
            .map(|e| (e.name.as_str(), e.object_name().to_string()))
            .collect();
        assert_eq!(
            objects,
            [("large", "medium".into()), ("large", "medium.webp".into())]
        );
        assert_eq!(entries[0].size_bytes, record.variants[2].size_bytes);
    }

    #[test]
    fn a_new_variant_the_size_of_an_upright_original_no_larger_shares_it() {
        let mut record = photo(1000);
        record.width = 2000;
        record.height = 1500;
        record.size_bytes = 400;
        let made = new_variant(&record, true, &rendition("large", 2000, 500)).unwrap();
        let NewVariant::Shares(entries) = made else {
            panic!("shares the original");
        };
        assert_eq!(entries.len(), 1);
        assert!(entries[0].object_name().is_original());
        assert_eq!(entries[0].size_bytes, 400);
        // Turned to be viewed, the original's pixels are not the variant's.
        let turned = new_variant(&record, false, &rendition("large", 2000, 500)).unwrap();
        assert!(matches!(turned, NewVariant::Stores(_)));
    }
}
