//! The same work without the service: `aws-sdk-s3` and `aws-sdk-dynamodb`
//! straight to the test servers.

use bytes::Bytes;
use futures::StreamExt;
use image_service::domain::ImageId;
use image_service::domain::image::Timestamp;

use crate::harness::{PART_SIZE, PARTS_IN_FLIGHT};

/// The same work without the service: aws-sdk-s3 and aws-sdk-dynamodb on
/// the same servers.
pub struct Raw {
    s3: aws_sdk_s3::Client,
    dynamodb: aws_sdk_dynamodb::Client,
}

impl Raw {
    pub async fn connect(s3_endpoint: &str, dynamodb_endpoint: &str) -> Self {
        let shared = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new("us-east-1"))
            .load()
            .await;
        let s3 = aws_sdk_s3::config::Builder::from(&shared)
            .endpoint_url(s3_endpoint)
            .force_path_style(true)
            .build();
        let dynamodb = aws_sdk_dynamodb::config::Builder::from(&shared)
            .endpoint_url(dynamodb_endpoint)
            .build();
        Self {
            s3: aws_sdk_s3::Client::from_conf(s3),
            dynamodb: aws_sdk_dynamodb::Client::from_conf(dynamodb),
        }
    }

    pub async fn create_bucket(&self, bucket: &str) {
        self.s3
            .create_bucket()
            .bucket(bucket)
            .send()
            .await
            .expect("bucket");
        use aws_sdk_dynamodb::types::{
            AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType,
        };
        self.dynamodb
            .create_table()
            .table_name(bucket)
            .billing_mode(BillingMode::PayPerRequest)
            .attribute_definitions(
                AttributeDefinition::builder()
                    .attribute_name("pk")
                    .attribute_type(ScalarAttributeType::S)
                    .build()
                    .expect("attr"),
            )
            .key_schema(
                KeySchemaElement::builder()
                    .attribute_name("pk")
                    .key_type(KeyType::Hash)
                    .build()
                    .expect("key"),
            )
            .send()
            .await
            .expect("table");
    }

    /// `signed`: whether SigV4 covers the part bytes (the SDK's default
    /// over plain HTTP) or they go as `UNSIGNED-PAYLOAD`, as over HTTPS.
    pub async fn multipart_upload(&self, bucket: &str, key: &str, bytes: &Bytes, signed: bool) {
        let upload = self
            .s3
            .create_multipart_upload()
            .bucket(bucket)
            .key(key)
            .send()
            .await
            .expect("create multipart");
        let id = upload.upload_id().expect("upload id").to_owned();
        let parts: Vec<_> = futures::stream::iter(0..bytes.len().div_ceil(PART_SIZE))
            .map(|i| {
                let body = bytes.slice(i * PART_SIZE..((i + 1) * PART_SIZE).min(bytes.len()));
                let id = id.clone();
                async move {
                    let number = i as i32 + 1;
                    let request = self
                        .s3
                        .upload_part()
                        .bucket(bucket)
                        .key(key)
                        .upload_id(id)
                        .part_number(number)
                        .body(body.into())
                        .customize();
                    let request = if signed {
                        request
                    } else {
                        request.disable_payload_signing()
                    };
                    let part = request.send().await.expect("part");
                    aws_sdk_s3::types::CompletedPart::builder()
                        .part_number(number)
                        .e_tag(part.e_tag().unwrap_or_default())
                        .build()
                }
            })
            .buffered(PARTS_IN_FLIGHT)
            .collect()
            .await;
        self.s3
            .complete_multipart_upload()
            .bucket(bucket)
            .key(key)
            .upload_id(id)
            .multipart_upload(
                aws_sdk_s3::types::CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .send()
            .await
            .expect("complete");
    }

    pub async fn put_object(&self, bucket: &str, key: &str, bytes: Bytes) {
        self.s3
            .put_object()
            .bucket(bucket)
            .key(key)
            .body(bytes.into())
            .send()
            .await
            .expect("put");
    }

    pub async fn get_object(&self, bucket: &str, key: &str) -> usize {
        let mut body = self
            .s3
            .get_object()
            .bucket(bucket)
            .key(key)
            .send()
            .await
            .expect("get")
            .body;
        let mut total = 0;
        while let Some(chunk) = body.try_next().await.expect("body") {
            total += chunk.len();
        }
        total
    }

    /// What storing one small image minimally takes: the object, then an
    /// item describing it, of the service's item's shape and in its table
    /// (so the store maintains the same indexes for both).
    pub async fn put_pair(&self, bucket: &str, bytes: Bytes) {
        let id = ImageId::new().to_string();
        let len = bytes.len();
        self.put_object(bucket, &format!("images/{id}/original"), bytes)
            .await;
        use aws_sdk_dynamodb::types::AttributeValue;
        let micros = Timestamp::now().as_micros().to_string();
        self.dynamodb
            .put_item()
            .table_name(bucket)
            .item("pk", AttributeValue::S(format!("image#{id}")))
            .item("sk", AttributeValue::S("image".into()))
            .item("size", AttributeValue::N(len.to_string()))
            .item("doc", AttributeValue::S("x".repeat(600)))
            .item("rev", AttributeValue::N("1".into()))
            .item("owner", AttributeValue::S("small".into()))
            .item("content_type", AttributeValue::S("image/png".into()))
            .item("created", AttributeValue::N(micros))
            .item("all", AttributeValue::S("image".into()))
            .send()
            .await
            .expect("put item");
    }
}
