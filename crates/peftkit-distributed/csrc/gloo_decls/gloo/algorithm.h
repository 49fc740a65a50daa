// peftkit: declarations only. See ../README.md.
#pragma once
