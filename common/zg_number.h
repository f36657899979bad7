/*  =========================================================================
    zg_number - doubles as the shortest decimal text that reads back

    Python prints a float (repr, str, JSON) as the fewest significant
    digits that read back to the same double; the reference's headers and
    messages carry money that way, and a spend record must reach the
    database as exactly the double it was. These run for every answer to
    a virtual key and every spend record, so the digits come from 80-bit
    arithmetic, with printf and strtod only for the rare values where that
    cannot decide (and where long double is no wider than double).
    =========================================================================
*/
#ifndef ZG_NUMBER_H_INCLUDED
#define ZG_NUMBER_H_INCLUDED

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define ZG_NUMBER_DIGITS_MAX    17      //  significant digits of any double
#define ZG_NUMBER_TEXT_MAX      32      //  zg_number_repr and zg_number_json, with the NUL

//  The fewest significant digits that read back to |value| (finite), as
//  Python finds them: value = 0.d1d2...dn x 10^(exponent + 1), i.e. the
//  first digit stands for 10^exponent. No trailing zeros (zero is "0",
//  exponent 0). Returns the number of digits written (and a NUL).
int zg_number_shortest (double value, char digits [ZG_NUMBER_DIGITS_MAX + 1], int *exponent);

//  Python's repr of a float: positional from 1e-4 up to 1e16 ("0.5",
//  "10.0", "123456.789"), else exponent form ("1e-05", "1.5e+16"); "nan",
//  "inf", "-inf". Returns the length, or -1 when size is too small
//  (ZG_NUMBER_TEXT_MAX always fits).
int zg_number_repr (double value, char *buf, size_t size);

//  A JSON number that reads back to exactly value (finite): the shortest
//  digits as an integer with an exponent ("15e-6"). Returns the length, or
//  -1 when value is not finite or size is too small.
int zg_number_json (double value, char *buf, size_t size);

//  Writes value in decimal backwards, its last digit just before end, and
//  returns its first digit (no NUL is written). ZG_NUMBER_UINT_MAX bytes
//  before end are always enough. For text written on every call (spend
//  records, key headers), without printf.
#define ZG_NUMBER_UINT_MAX      20
char *zg_number_uint_text (uint64_t value, char *end);

//  Self test
void zg_number_test (bool verbose);

#ifdef __cplusplus
}
#endif

#endif
