//! Images: the store's operations ([`crate::images`]) with what needs the containers (who
//! uses an image, for `rmi`) and docker's image events (`load`, `import`, `tag`, `untag`,
//! `delete`, `save`, `pull`). Loads, imports and saves are blocking: the front ends run them
//! on a blocking thread, with the archive streaming through.

use std::collections::BTreeMap;
use std::io::{Read, Write};

use super::events::{Event, EventKind};
use super::{Engine, EngineError};
use crate::image::{self, ImageError, Resolved};
use crate::images::{
    ContainerUse, Image, ImageId, ImageStore, ImportOptions, LoadedImage, Progress, Reference,
    Removed, StoreError,
};

/// An image as `images` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageView {
    pub id: ImageId,
    /// Familiar names (`busybox:latest`); empty for an untagged image.
    pub repo_tags: Vec<String>,
    /// Unix seconds, from the config (0 when it has none).
    pub created: i64,
    /// Uncompressed bytes of its layers.
    pub size: u64,
    pub labels: BTreeMap<String, String>,
    /// Containers made from it.
    pub containers: usize,
}

/// An image in full, as `image inspect` shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageDetail {
    pub image: Image,
    /// Containers made from it.
    pub containers: usize,
}

impl Engine {
    /// The image store of this state directory.
    pub fn image_store(&self) -> ImageStore {
        ImageStore::new(self.state().root())
    }

    fn containers_of(&self) -> BTreeMap<String, usize> {
        let mut n = BTreeMap::new();
        for m in self.state().list() {
            if !m.image_id.is_empty() {
                *n.entry(m.image_id).or_insert(0) += 1;
            }
        }
        n
    }

    /// Finds what a `create` names: an image of the store by name, ID or ID prefix (the
    /// built-in busybox is loaded when asked for and missing), or a root filesystem
    /// directory. Not found is docker's `No such image` (its client then tries a pull).
    pub fn image_resolve(&self, reference: &str) -> Result<Resolved, EngineError> {
        image::resolve(&self.image_store(), reference).map_err(|e| match e {
            // A name in docker's words (its client pulls on them); a path keeps the hint.
            ImageError::NotFound(_) if !image::looks_like_path(reference) => {
                EngineError::NoSuchImage(reference.to_owned())
            }
            other => other.into(),
        })
    }

    /// An image's ID by name, ID or prefix (loading the built-in busybox if it is named).
    fn image_id(&self, reference: &str) -> Result<ImageId, EngineError> {
        let store = self.image_store();
        match store.resolve(reference) {
            Err(StoreError::NoSuchImage(_)) if image::is_builtin_name(reference) => {
                Ok(image::load_builtin(&store)?)
            }
            other => Ok(other?),
        }
    }

    /// All images, newest first; a state directory's store gets the built-in busybox image
    /// on first use.
    pub fn images(&self) -> Result<Vec<ImageView>, EngineError> {
        let store = self.image_store();
        image::ensure_builtin(&store);
        let used = self.containers_of();
        Ok(store
            .list()?
            .into_iter()
            .map(|s| ImageView {
                containers: used.get(s.id.as_str()).copied().unwrap_or(0),
                id: s.id,
                repo_tags: s.repo_tags,
                created: s.created,
                size: s.size,
                labels: s.labels,
            })
            .collect())
    }

    /// One image by name (`busybox`, `busybox:latest`, `docker.io/library/busybox`), ID or
    /// unique ID prefix.
    pub fn image(&self, reference: &str) -> Result<ImageDetail, EngineError> {
        let id = self.image_id(reference)?;
        let image = self.image_store().inspect(id.as_str())?;
        let containers = self.containers_of().get(id.as_str()).copied().unwrap_or(0);
        Ok(ImageDetail { image, containers })
    }

    /// Loads the images of a `docker save` archive or OCI layout (`docker load`). Blocking.
    pub fn image_load(
        &self,
        archive: impl Read,
        progress: &dyn Progress,
    ) -> Result<Vec<LoadedImage>, EngineError> {
        let loaded = self.image_store().load(archive, progress)?;
        for img in &loaded {
            for (tag, old) in &img.moved {
                self.publish(
                    Event::new(EventKind::Image, "untag", old.as_str()).with("name", tag.clone()),
                );
            }
            for tag in &img.tags {
                self.publish(
                    Event::new(EventKind::Image, "tag", img.id.as_str()).with("name", tag.clone()),
                );
            }
            let name = img
                .tags
                .first()
                .cloned()
                .unwrap_or_else(|| img.id.to_string());
            self.publish(Event::new(EventKind::Image, "load", img.id.as_str()).with("name", name));
        }
        Ok(loaded)
    }

    /// Makes an image of a root filesystem tarball (`docker import`). Blocking.
    pub fn image_import(
        &self,
        tarball: impl Read,
        opts: &ImportOptions,
        progress: &dyn Progress,
    ) -> Result<Image, EngineError> {
        let image = self.image_store().import(tarball, opts, progress)?;
        let name = image
            .repo_tags
            .first()
            .cloned()
            .unwrap_or_else(|| image.id.to_string());
        self.publish(Event::new(EventKind::Image, "import", image.id.as_str()).with("name", name));
        Ok(image)
    }

    /// Gives an image another name (`docker tag`).
    pub fn image_tag(&self, source: &str, target: &str) -> Result<(), EngineError> {
        let id = self.image_id(source)?;
        let store = self.image_store();
        store.tag(id.as_str(), target)?;
        let name = Reference::parse(target)
            .map(|r| r.with_default_tag().familiar())
            .unwrap_or_else(|_| target.to_owned());
        self.publish(Event::new(EventKind::Image, "tag", id.as_str()).with("name", name));
        Ok(())
    }

    /// `docker rmi`, with docker's rules: a container (running or not) keeps its image
    /// from being deleted unless forced, and a running one even then (see
    /// [`ImageStore::remove`]). Under the state directory's lock, so that no container is
    /// being made from the image meanwhile.
    pub fn image_remove(&self, reference: &str, force: bool) -> Result<Vec<Removed>, EngineError> {
        let removed = {
            let _lock = self.state().lock()?;
            let metas = self.state().list();
            let in_use = |id: &ImageId| -> Option<ContainerUse> {
                let users: Vec<&crate::state::Meta> =
                    metas.iter().filter(|m| m.image_id == id.as_str()).collect();
                // A running user decides (it cannot be forced); else any stopped one.
                users
                    .iter()
                    .find(|m| Self::running(m))
                    .or_else(|| users.first())
                    .map(|m| ContainerUse {
                        id: m.id.clone(),
                        running: Self::running(m),
                    })
            };
            self.image_store().remove(reference, force, &in_use)?
        };
        let mut id_of_untagged = String::new();
        for r in &removed {
            match r {
                Removed::Untagged(tag) => {
                    if id_of_untagged.is_empty() {
                        // The image the tag named: the deleted one, or (an untag only) the
                        // one the reference resolves to now.
                        id_of_untagged = removed
                            .iter()
                            .find_map(|x| match x {
                                Removed::Deleted(id) => Some(id.to_string()),
                                Removed::Untagged(_) => None,
                            })
                            .or_else(|| {
                                self.image_store()
                                    .resolve(reference)
                                    .ok()
                                    .map(|i| i.to_string())
                            })
                            .unwrap_or_default();
                    }
                    self.publish(
                        Event::new(EventKind::Image, "untag", &id_of_untagged)
                            .with("name", tag.clone()),
                    );
                }
                Removed::Deleted(id) => {
                    self.publish(
                        Event::new(EventKind::Image, "delete", id.as_str())
                            .with("name", id.to_string()),
                    );
                }
            }
        }
        Ok(removed)
    }

    /// Writes images as one archive (`docker save`): a `docker save` archive that is an OCI
    /// layout at the same time. Blocking.
    pub fn image_save(&self, references: &[String], out: impl Write) -> Result<(), EngineError> {
        if references.is_empty() {
            return Err(EngineError::BadRequest("no image given to save".to_owned()));
        }
        // Names stay names (a name puts its tag into the archive); the built-in image is
        // loaded first if it is named and missing.
        let mut ids = Vec::new();
        for r in references {
            ids.push(self.image_id(r)?);
        }
        let refs: Vec<&str> = references.iter().map(String::as_str).collect();
        self.image_store().save(&refs, out)?;
        for (r, id) in references.iter().zip(&ids) {
            self.publish(Event::new(EventKind::Image, "save", id.as_str()).with("name", r.clone()));
        }
        Ok(())
    }

    /// `docker pull`: there is no registry here; the built-in busybox image is the only one
    /// that can be "pulled" (it is loaded from Debian's busybox-static).
    pub fn image_pull(&self, reference: &str) -> Result<ImageId, EngineError> {
        if !image::is_builtin_name(reference) {
            return Err(EngineError::PullDenied(reference.to_owned()));
        }
        let id = self.image_id(reference)?;
        self.publish(
            Event::new(EventKind::Image, "pull", id.as_str()).with("name", reference.to_owned()),
        );
        Ok(id)
    }
}
