//! `imageservice.v1.ModerationService`: the moderators' tools, over
//! [`Moderation`]. Calls share the image service's machinery (identity,
//! calls in flight, memory, traces).
use tonic::{Request, Response, Status};

use super::convert;
use super::service::ImageApi;
use crate::domain::moderation::{Moderation, SimilarTo};
use crate::pb;
use crate::pb::moderation_service_server::ModerationService;

/// The service's full name, as in traces.
const SERVICE: &str = "imageservice.v1.ModerationService";

/// The gRPC face of [`Moderation`].
pub struct ModerationApi {
    api: ImageApi,
    moderation: Moderation,
}

impl ModerationApi {
    /// Beside `api`, sharing its calls in flight and its memory budget.
    pub fn beside(api: &ImageApi) -> Self {
        Self {
            moderation: api.images.moderation(),
            api: api.for_service(SERVICE),
        }
    }
}

#[tonic::async_trait]
impl ModerationService for ModerationApi {
    async fn list_images_for_review(
        &self,
        request: Request<pb::ListImagesForReviewRequest>,
    ) -> Result<Response<pb::ListImagesForReviewResponse>, Status> {
        let api = &self.api;
        api.observe(
            "ListImagesForReview",
            request.metadata(),
            |_in_flight| async {
                let caller = api.caller_of(&request).await?;
                let r = request.get_ref();
                let state = convert::state_of(r.state)?;
                let memory = api
                    .reserve_response(&caller, api.images.page_memory())
                    .await?;
                let page = self
                    .moderation
                    .list_for_review(&caller, state, r.page_size, &r.page_token)
                    .await?;
                let response = pb::ListImagesForReviewResponse {
                    images: page
                        .images
                        .iter()
                        .map(convert::image_for_moderator)
                        .collect(),
                    next_page_token: page.next_page_token,
                };
                api.respond_within(&caller, Some(memory), response).await
            },
        )
        .await
    }

    async fn set_image_state(
        &self,
        request: Request<pb::SetImageStateRequest>,
    ) -> Result<Response<pb::SetImageStateResponse>, Status> {
        let api = &self.api;
        api.observe("SetImageState", request.metadata(), |_in_flight| async {
            let caller = api.caller_of(&request).await?;
            let r = request.get_ref();
            let state = convert::state_of(r.state)?;
            let etag = (!r.etag.is_empty()).then_some(r.etag.as_str());
            let record = self
                .moderation
                .set_state(&caller, &r.image_id, state, &r.reason, etag)
                .await?;
            let image = Some(convert::image_for_moderator(&record));
            api.respond(&caller, pb::SetImageStateResponse { image })
                .await
        })
        .await
    }

    async fn purge_image(
        &self,
        request: Request<pb::PurgeImageRequest>,
    ) -> Result<Response<pb::PurgeImageResponse>, Status> {
        let api = &self.api;
        api.observe("PurgeImage", request.metadata(), |_in_flight| async {
            let caller = api.caller_of(&request).await?;
            let r = request.get_ref();
            let record = self
                .moderation
                .purge(&caller, &r.image_id, &r.reason)
                .await?;
            let image = Some(convert::image_for_moderator(&record));
            api.respond(&caller, pb::PurgeImageResponse { image }).await
        })
        .await
    }

    async fn find_similar_images(
        &self,
        request: Request<pb::FindSimilarImagesRequest>,
    ) -> Result<Response<pb::FindSimilarImagesResponse>, Status> {
        use pb::find_similar_images_request::Query;
        let api = &self.api;
        api.observe(
            "FindSimilarImages",
            request.metadata(),
            |_in_flight| async {
                let caller = api.caller_of(&request).await?;
                let r = request.get_ref();
                let query = r.query.as_ref().map(|query| match query {
                    Query::ImageId(id) => SimilarTo::Image(id),
                    Query::PdqHash(hash) => SimilarTo::Hash(hash),
                });
                let memory = api
                    .reserve_response(&caller, api.images.page_memory())
                    .await?;
                let found = self
                    .moderation
                    .find_similar(&caller, query, r.max_distance, r.page_size)
                    .await?;
                let response = pb::FindSimilarImagesResponse {
                    images: found
                        .images
                        .iter()
                        .map(|f| pb::SimilarImage {
                            image: Some(convert::image_for_moderator(&f.record)),
                            distance: f.distance,
                        })
                        .collect(),
                    candidates_truncated: found.truncated,
                };
                api.respond_within(&caller, Some(memory), response).await
            },
        )
        .await
    }

    async fn list_moderation_actions(
        &self,
        request: Request<pb::ListModerationActionsRequest>,
    ) -> Result<Response<pb::ListModerationActionsResponse>, Status> {
        let api = &self.api;
        api.observe(
            "ListModerationActions",
            request.metadata(),
            |_in_flight| async {
                let caller = api.caller_of(&request).await?;
                let r = request.get_ref();
                let page = self
                    .moderation
                    .actions(&caller, r.page_size, &r.page_token)
                    .await?;
                let response = pb::ListModerationActionsResponse {
                    actions: page
                        .actions
                        .iter()
                        .map(convert::moderation_action)
                        .collect(),
                    next_page_token: page.next_page_token,
                };
                api.respond(&caller, response).await
            },
        )
        .await
    }
}
