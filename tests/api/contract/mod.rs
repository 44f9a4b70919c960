//! The contract suite: every behaviour of the API that callers rely on,
//! driven over a real socket with the generated client. It runs against
//! every storage backend (see the `contract_suite!` list at the bottom).

use std::collections::HashSet;
use std::time::Duration;

use crate::helpers::images;
use crate::helpers::{Backend, TestApp, as_user, assert_code, spec, upload_messages};
use image_service::pb;
use image_service::pb::upload_image_request::Data;
use sha2::{Digest, Sha256};
use tonic::{Code, Status};

mod blocks;
mod changes;
mod downloads;
mod encodings;
mod erasure;
mod events;
mod feeds;
mod late_meta;
mod listing;
mod moderation;
mod negotiation;
mod quotas;
mod scans;
mod sessions;
mod similar;
mod uploads;
mod variants;

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Each of an image's variant entries: name, type, width and height.
fn variant_rows(image: &pb::Image) -> Vec<(&str, &str, u32, u32)> {
    image
        .variants
        .iter()
        .map(|v| (v.name.as_str(), v.content_type.as_str(), v.width, v.height))
        .collect()
}

fn ids(images: &[pb::Image]) -> Vec<String> {
    images.iter().map(|i| i.image_id.clone()).collect()
}

/// The real binary on the stores of `app` (stopped first), to be killed
/// as a crash would, and a client of it.
async fn spawn_killable(
    app: &mut TestApp,
) -> (
    std::process::Child,
    pb::image_service_client::ImageServiceClient<tonic::transport::Channel>,
) {
    app.stop().await.unwrap();
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_image-service"));
    command.args(&app.args[1..]).args(["--log-format", "json"]);
    // The embedded store is one process's at a time: the server stopped
    // above may hold it for a moment after its task ends.
    let mut tries = 0;
    let (replica, grpc) = loop {
        if let Some(started) = crate::aws::try_spawn_service(&mut command) {
            break started;
        }
        tries += 1;
        assert!(tries < 50, "the replica never started");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let client =
        pb::image_service_client::ImageServiceClient::new(crate::helpers::connect(grpc).await);
    (replica, client)
}

/// Sends `messages` as one upload stream of `user`'s through `client`.
async fn upload_through(
    client: &mut pb::image_service_client::ImageServiceClient<tonic::transport::Channel>,
    user: &str,
    messages: Vec<pb::UploadImageRequest>,
) -> pb::Image {
    client
        .upload_image(as_user(user, tokio_stream::iter(messages)))
        .await
        .unwrap()
        .into_inner()
        .image
        .unwrap()
}

/// A listing of `user`'s images only.
fn owned_by(user: &str) -> pb::ListImagesRequest {
    pb::ListImagesRequest {
        owner_id: user.into(),
        ..Default::default()
    }
}

macro_rules! contract_suite {
    ($backend:ident: $($module:ident::$case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                super::$module::$case(super::Backend::$backend).await;
            }
        )*
    };
}

macro_rules! all_cases {
    ($backend:ident) => {
        contract_suite!($backend:
            uploads::an_upload_is_described_by_its_metadata,
            quotas::concurrent_uploads_on_two_replicas_never_pass_the_quota,
            quotas::variants_never_take_concurrent_uploads_past_the_byte_quota,
            quotas::usage_is_read_by_its_user_or_an_admin_who_alone_sets_quotas,
            quotas::a_refused_upload_gives_its_reservation_back_before_it_answers,
            quotas::a_retry_of_a_stored_upload_is_answered_at_the_quota,
            quotas::the_repair_pass_corrects_a_reservation_a_crash_left,
            quotas::a_sessions_bytes_are_held_from_its_start_to_its_end,
            quotas::an_expired_sessions_bytes_are_given_back,
            uploads::every_accepted_type_is_sniffed_from_the_bytes,
            downloads::downloads_return_the_stored_bytes_in_chunks_of_at_most_one_mib,
            downloads::ranged_downloads_return_exactly_the_range,
            downloads::a_resumed_download_reads_the_object_it_began_with,
            changes::unknown_and_malformed_ids_are_told_apart,
            changes::every_call_needs_an_identity,
            listing::each_filter_alone_and_combined_returns_matches_newest_first,
            listing::time_ranges_bound_the_listing,
            listing::a_page_walk_returns_every_image_exactly_once_in_order,
            listing::sparse_combined_filters_still_fill_their_pages,
            listing::page_sizes_default_to_fifty_and_are_capped,
            listing::altered_or_foreign_page_tokens_are_rejected,
            uploads::rejected_uploads_store_nothing,
            uploads::a_cancelled_upload_stores_nothing,
            changes::only_the_owner_may_update_or_delete,
            changes::an_owners_delete_racing_edits_of_the_image_succeeds,
            changes::updates_change_the_masked_fields_and_move_the_indexes,
            changes::a_stale_etag_aborts_the_update,
            changes::a_deleted_image_is_gone_everywhere,
            downloads::presigned_urls_serve_the_bytes_with_ranges,
            downloads::presigned_urls_expire_and_resist_tampering,
            uploads::an_idempotency_key_returns_the_first_image,
            uploads::concurrent_uploads_with_one_key_store_one_image,
            uploads::many_users_upload_at_once,
            uploads::an_upload_deleted_at_once_is_gone,
            downloads::a_download_racing_a_delete_is_whole_or_not_found,
            changes::concurrent_updates_are_never_lost,
            variants::a_sideways_phone_photo_comes_back_upright_and_without_gps,
            variants::small_and_animated_images_get_variants_never_upscaled,
            variants::a_heic_is_stored_without_its_location,
            variants::a_thumbhash_keeps_the_aspect_ratio_and_the_alpha,
            variants::a_photo_gets_a_pdq_hash_only_its_owner_sees,
            uploads::images_that_cannot_be_decoded_are_refused_and_leave_nothing,
            uploads::a_pixel_bomb_is_refused_before_its_pixels_arrive,
            uploads::a_jpeg_built_to_spend_cpu_is_refused_from_its_scan_headers,
            listing::pages_of_large_records_are_cut_by_bytes_and_continue,
            sessions::a_cut_upload_resumes_on_another_server_from_what_it_holds,
            sessions::a_resume_may_resend_held_bytes_but_not_skip_any,
            sessions::a_second_stream_on_a_session_is_aborted,
            sessions::only_the_owner_may_use_a_session,
            sessions::starting_a_session_validates_the_spec_and_is_idempotent,
            sessions::expired_sessions_are_removed_with_their_bytes,
            sessions::a_direct_upload_is_checked_and_committed_like_a_streamed_one,
            sessions::a_direct_upload_of_a_non_image_is_refused_and_removed,
            sessions::bytes_sent_after_a_cancel_are_removed_by_the_repair_pass,
            sessions::part_urls_of_a_closed_session_leave_nothing_at_rest,
            sessions::upload_urls_asked_again_are_for_the_same_parts,
            sessions::cancelling_direct_uploads_over_and_over_stays_within_the_staged_cap,
            sessions::a_cancelled_sessions_key_does_not_reopen_its_part_urls,
            sessions::a_deleted_uploads_key_does_not_reopen_its_part_urls,
            sessions::each_user_has_a_bounded_number_of_open_sessions,
            sessions::each_user_has_a_bounded_number_of_staged_bytes,
            sessions::a_direct_uploads_parts_hold_no_more_than_the_session,
            sessions::a_cancel_racing_a_complete_never_both_succeed,
            feeds::a_batch_returns_each_image_once_in_order_and_names_the_missing,
            feeds::a_batch_of_too_many_or_malformed_ids_is_refused,
            feeds::download_urls_stay_the_same_for_a_window_and_revalidate,
            late_meta::a_heic_with_meta_after_mdat_is_stored_scrubbed_by_every_path,
            late_meta::a_heic_cut_before_its_late_meta_box_leaves_nothing,
            negotiation::variants_of_the_same_size_share_one_object,
            negotiation::a_viewer_gets_the_smaller_original_when_it_accepts_its_type,
            negotiation::a_transparent_image_is_served_in_its_alpha_capable_encoding,
            negotiation::an_overlong_accept_is_refused,
            encodings::encodings_made_after_the_acknowledgement_appear_and_decode_upright,
            encodings::an_edit_racing_the_background_update_is_kept,
            encodings::a_delete_racing_the_background_leaves_nothing,
            encodings::work_the_queue_has_no_room_for_is_left_to_the_repair_pass,
            encodings::a_killed_replicas_encodings_are_made_by_another_replicas_repair_pass,
            events::every_change_is_one_event_in_order,
            events::a_watcher_resumes_from_its_cursor_without_a_gap,
            events::only_named_services_watch_and_requests_are_checked,
            events::a_cursor_past_the_retention_is_out_of_range,
            events::a_slow_watcher_is_cut_with_a_cursor_that_misses_nothing,
            events::a_watch_ends_with_its_cursor_when_the_server_stops,
            moderation::only_moderators_use_the_moderation_service,
            moderation::a_quarantined_image_is_its_owners_alone_until_approved,
            moderation::a_removed_image_loses_its_bytes_and_keeps_its_record,
            moderation::the_review_pages_in_time_order_and_the_trail_keeps_every_action,
            moderation::a_stale_etag_changes_nothing,
            moderation::state_changes_and_purges_are_events,
            scans::a_sync_scan_allows_quarantines_or_rejects_before_the_answer,
            scans::a_scan_without_a_verdict_follows_scan_on_failure,
            scans::an_async_scan_acknowledges_pending_and_applies_the_verdict_later,
            scans::a_killed_replicas_pending_scans_are_finished_by_the_repair_pass,
            scans::one_users_backlog_of_async_scans_does_not_hold_up_another_users,
            scans::one_users_sync_scans_wait_behind_another_users,
            scans::async_scans_past_the_queue_are_left_to_the_repair_pass,
            similar::edited_copies_of_a_photo_are_found_and_unrelated_photos_are_not,
            similar::a_crowded_hash_cuts_the_search_short_and_other_searches_are_whole,
            blocks::a_block_listed_photo_is_caught_resized_reencoded_or_copied,
            erasure::an_erased_user_leaves_nothing_and_others_are_untouched,
            erasure::an_erasure_cut_by_a_crash_is_finished_by_the_next_replica,
            erasure::a_flood_of_erasures_stays_within_the_bound_and_each_completes,
            erasure::a_trickling_upload_does_not_hold_back_another_users_erasure,
            erasure::a_session_committing_as_the_erasure_starts_leaves_nothing,
            erasure::a_key_used_again_after_an_erasure_starts_another_session,
            erasure::uploads_committing_past_the_erasure_leave_nothing,
        );
    };
}

mod embedded {
    all_cases!(Embedded);
    contract_suite!(Embedded:
        scans::unsafe_scan_settings_stop_the_start,
        blocks::a_malformed_block_list_stops_the_start,
    );
    #[cfg(feature = "heif")]
    contract_suite!(Embedded:
        variants::real_heic_and_avif_get_upright_variants_and_lose_their_location,
        variants::a_tiled_heic_is_one_image_of_its_full_size,
    );
}

mod aws {
    all_cases!(Aws);
    contract_suite!(Aws:
        events::a_watcher_cut_on_one_replica_resumes_on_another_missing_nothing,
        blocks::a_block_list_in_s3_is_read_again_when_replaced_and_kept_when_gone,
        blocks::an_s3_block_list_that_cannot_be_read_stops_the_start,
    );
    #[cfg(feature = "heif")]
    contract_suite!(Aws:
        variants::real_heic_and_avif_get_upright_variants_and_lose_their_location,
        variants::a_tiled_heic_is_one_image_of_its_full_size,
    );
}
