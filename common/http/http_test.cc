#include <gtest/gtest.h>
TEST(Http, Placeholder) { SUCCEED(); }
