//! `imageservice.v1.ImageService`.
use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use super::auth::Authenticator;
use super::convert;
use crate::domain::{DomainError, Images};
use crate::pb;
use crate::pb::image_service_server::ImageService;

/// The gRPC face of [`Images`].
pub struct ImageApi {
    images: Images,
    auth: Arc<Authenticator>,
}

impl ImageApi {
    pub fn new(images: Images, auth: Arc<Authenticator>) -> Self {
        Self { images, auth }
    }
}

/// A failure of the incoming upload stream itself.
fn stream_error(status: Status) -> DomainError {
    match status.code() {
        tonic::Code::Cancelled | tonic::Code::DeadlineExceeded => DomainError::Cancelled,
        _ => DomainError::invalid(format!("the upload stream failed: {}", status.message())),
    }
}

type DownloadStream = Pin<Box<dyn Stream<Item = Result<pb::DownloadImageResponse, Status>> + Send>>;

#[tonic::async_trait]
impl ImageService for ImageApi {
    async fn upload_image(
        &self,
        request: Request<Streaming<pb::UploadImageRequest>>,
    ) -> Result<Response<pb::UploadImageResponse>, Status> {
        let caller = self.auth.authenticate(request.metadata())?;
        let frames = request
            .into_inner()
            .map(|message| message.map(convert::upload_frame).map_err(stream_error));
        let record = self.images.upload(&caller, frames).await?;
        tracing::info!(image_id = %record.id, owner = %record.owner, size = record.size_bytes, "image uploaded");
        Ok(Response::new(pb::UploadImageResponse {
            image: Some(convert::image(&record)),
        }))
    }

    async fn get_image(
        &self,
        request: Request<pb::GetImageRequest>,
    ) -> Result<Response<pb::GetImageResponse>, Status> {
        self.auth.authenticate(request.metadata())?;
        let record = self.images.get(&request.get_ref().image_id).await?;
        Ok(Response::new(pb::GetImageResponse {
            image: Some(convert::image(&record)),
        }))
    }

    async fn list_images(
        &self,
        request: Request<pb::ListImagesRequest>,
    ) -> Result<Response<pb::ListImagesResponse>, Status> {
        self.auth.authenticate(request.metadata())?;
        let query = convert::list_request(request.into_inner())?;
        let page = self.images.list(&query).await?;
        Ok(Response::new(pb::ListImagesResponse {
            images: page.images.iter().map(convert::image).collect(),
            next_page_token: page.next_page_token,
        }))
    }

    type DownloadImageStream = DownloadStream;

    async fn download_image(
        &self,
        request: Request<pb::DownloadImageRequest>,
    ) -> Result<Response<Self::DownloadImageStream>, Status> {
        self.auth.authenticate(request.metadata())?;
        let r = request.into_inner();
        let download = self
            .images
            .download(&r.image_id, &r.variant, r.read_offset, r.read_limit)
            .await?;
        let header = pb::DownloadImageResponse {
            image: Some(convert::image(&download.image)),
            content_range: Some(pb::ContentRange {
                offset: download.offset as i64,
                length: download.length as i64,
                total_size: download.total_size as i64,
            }),
            chunk: Default::default(),
        };
        let chunks = download.chunks.map(|chunk| {
            chunk
                .map(|chunk| pb::DownloadImageResponse {
                    chunk,
                    ..Default::default()
                })
                .map_err(Status::from)
        });
        let stream = futures::stream::once(async { Ok(header) }).chain(chunks);
        Ok(Response::new(Box::pin(stream)))
    }

    async fn get_download_url(
        &self,
        request: Request<pb::GetDownloadUrlRequest>,
    ) -> Result<Response<pb::GetDownloadUrlResponse>, Status> {
        self.auth.authenticate(request.metadata())?;
        let r = request.into_inner();
        let expires_in = convert::expires_in(r.expires_in)?;
        let disposition = convert::disposition(r.disposition)?;
        let url = self
            .images
            .download_url(&r.image_id, &r.variant, expires_in, disposition)
            .await?;
        Ok(Response::new(pb::GetDownloadUrlResponse {
            url: url.url,
            expire_time: Some(convert::timestamp(url.expire_time)),
        }))
    }

    async fn update_image(
        &self,
        request: Request<pb::UpdateImageRequest>,
    ) -> Result<Response<pb::UpdateImageResponse>, Status> {
        let caller = self.auth.authenticate(request.metadata())?;
        let r = request.into_inner();
        let image_id = r.image_id.clone();
        let update = convert::image_update(r)?;
        let record = self.images.update(&caller, &image_id, update).await?;
        Ok(Response::new(pb::UpdateImageResponse {
            image: Some(convert::image(&record)),
        }))
    }

    async fn delete_image(
        &self,
        request: Request<pb::DeleteImageRequest>,
    ) -> Result<Response<pb::DeleteImageResponse>, Status> {
        let caller = self.auth.authenticate(request.metadata())?;
        self.images
            .delete(&caller, &request.get_ref().image_id)
            .await?;
        tracing::info!(image_id = %request.get_ref().image_id, owner = %caller, "image deleted");
        Ok(Response::new(pb::DeleteImageResponse {}))
    }
}
