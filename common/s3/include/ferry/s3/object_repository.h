// A repository in a bucket (docs/object-storage.md): the same configuration,
// chunks and points as a local repository, as objects under a prefix.
//
// Its location is a URL:
//
//   s3://BUCKET[/PREFIX][?endpoint=URL][&region=NAME][&style=path|virtual]
//                      [&ca=FILE][&credentials=FILE]
//                      [&object-lock=on|off][&lock-mode=compliance|governance]
//
//   endpoint     http(s)://host[:port] of the store; default AWS's
//                https://s3.REGION.amazonaws.com
//   region       default us-east-1 (Ceph RGW: the zonegroup's name)
//   style        path (default: works with every store and any bucket name)
//                or virtual (bucket.host, AWS's preference)
//   ca           PEM file of the CA that signed the store's certificate
//   credentials  a file of "access_key = ..." and "secret_key = ..." lines
//                (AWS's aws_access_key_id / aws_secret_access_key names too);
//                without it the environment's FERRY_S3_ACCESS_KEY and
//                FERRY_S3_SECRET_KEY, else AWS_ACCESS_KEY_ID,
//                AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN)
//   object-lock  on: init creates a missing bucket with S3 Object Lock and
//                refuses an existing bucket without it; point locks refuse
//                rather than fall back to lock.json alone. off (default):
//                Object Lock is used when the bucket has it.
//   lock-mode    the retention mode of point locks in an Object Lock
//                bucket: compliance (default: no one can shorten or lift
//                it) or governance (users with s3:BypassGovernanceRetention
//                can)
//
// Secrets never go in the URL (it is shown in listings and logs): a query
// naming a key or secret is refused.
#pragma once

#include <memory>
#include <string>

#include "ferry/common/repository.h"
#include "ferry/s3/client.h"
#include "ferry/s3/object_point_store.h"

namespace ferry::s3 {

struct ObjectLocation {
  BucketOptions bucket;
  std::string prefix;  // "" or ending in '/'
  ObjectLockOptions lock;  // object-lock=on sets lock.required
  std::string url;     // as given, for messages (it holds no secret)
};

bool IsObjectLocation(const std::string& location);
// kBadInput naming what is wrong; reads the credentials file or environment
// unless `resolve_credentials` is false (the coordinator checks a location
// whose credentials are on the workers' hosts).
ObjectLocation ParseObjectLocation(const std::string& url, bool resolve_credentials = true);

// Creates a repository under the location's prefix (the bucket is created
// when missing, with Object Lock when the location says object-lock=on).
// kBadInput when one is there already, or when object-lock=on and the
// existing bucket has no Object Lock.
void InitObjectRepository(const std::string& url, const RepositoryConfig& config);
// kNotFound: no such bucket or no repository under the prefix.
std::unique_ptr<Repository> OpenObjectRepository(const std::string& url);

}  // namespace ferry::s3
