// pcre2.h selects its code-unit width with a macro; ClassAd strings are byte strings.
#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
