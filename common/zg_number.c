/*  =========================================================================
    zg_number - doubles as the shortest decimal text that reads back

    The shortest digits, without trying every length:
      - a text of up to 15 digits that reads back lies within half a unit
        in the last place of the value, closer than half a step of 15
        digits, so rounding to 15 digits finds it (with zeros after it):
        when 15 digits read back, the shortest is those without their
        trailing zeros, and when they do not, it has 16 or 17 digits;
      - 17 digits always read back.
    16 digits are tried first, since sums of money mostly need them or
    more. Rounding to 16 can only be further from the value than a shorter
    text that reads back where the doubles are spaced unevenly, at a power
    of two: there 15 is tried even after 16 failed.

    Rounding to n digits and asking whether that reads back are both done
    in 80-bit arithmetic: value x 10^k (10^k exact up to 10^27) is off by at
    most 2^-64 of itself, so its nearest integer is known unless it lies
    that close to a half, and the rounded text reads back when its distance
    to value is under half a unit in the last place of value, which is
    known unless the two lie that close. When either is that close, or the
    value is out of the range of exact powers, or at a power of two (where
    the unit below is half the unit above), printf rounds and strtod reads
    back, exactly, as they would anyway.
    =========================================================================
*/
#include "common/zg_number.h"
#include "common/zg_selftest.h"

#include <assert.h>
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

//  long double must hold a 64-bit significand (x86's 80-bit format, or
//  wider) for the fast way; else printf and strtod do it all
#if LDBL_MANT_DIG >= 64
#   define S_FAST 1
#else
#   define S_FAST 0
#endif

//  Exact in a 64-bit significand: 10^27 = 2^27 x 5^27, and 5^27 < 2^64
#define S_POWER_MAX 27
static const long double s_powers [S_POWER_MAX + 1] = {
    1e0L, 1e1L, 1e2L, 1e3L, 1e4L, 1e5L, 1e6L, 1e7L, 1e8L, 1e9L, 1e10L, 1e11L, 1e12L, 1e13L,
    1e14L, 1e15L, 1e16L, 1e17L, 1e18L, 1e19L, 1e20L, 1e21L, 1e22L, 1e23L, 1e24L, 1e25L,
    1e26L, 1e27L
};

enum { S_NO = 0, S_YES = 1, S_UNSURE = -1 };

#define S_FRACTION_BITS ((UINT64_C (1) << 52) - 1)

//  2^exponent, for an exponent where doubles are normal
static inline long double
s_power_of_two (int exponent)
{
    assert (exponent >= -1022 && exponent <= 1023);
    uint64_t bits = (uint64_t) (exponent + 1023) << 52;
    double value;
    memcpy (&value, &bits, sizeof (value));
    return value;
}

//  value (> 0) rounded to precision digits, as printf rounds it: the
//  digits as an integer and the power of ten of the first; S_YES when they
//  read back to value, S_NO when not, S_UNSURE when 80 bits cannot tell
//  (then neither the digits nor the answer are given)
static int
s_fast_digits (double value, int precision, uint64_t *integer, int *exponent)
{
#if S_FAST
    //  value = 1.f x 2^(binary - 1): at 1.0 exactly (a power of two) the
    //  unit below is half the unit above
    uint64_t bits;
    memcpy (&bits, &value, sizeof (bits));
    if ((bits & S_FRACTION_BITS) == 0 || value < DBL_MIN)
        return S_UNSURE;
    int binary = (int) (bits >> 52 & 0x7ff) - 1022;
    //  log10 (value) lies in [(binary - 1) log10 (2), binary log10 (2)):
    //  this is its floor or one less, put right below
    int guess = (int) floor ((binary - 1) * 0.30102999566398120);
    const long double low = s_powers [precision - 1];
    const long double high = s_powers [precision];
    //  Twice the rounding error of scaled, which is below high
    const long double margin = high * 0x1p-63L;
    for (int attempt = 0; attempt < 3; attempt++) {
        int scale = precision - 1 - guess;
        if (scale > S_POWER_MAX || scale < -S_POWER_MAX)
            return S_UNSURE;
        long double scaled = scale >= 0 ? (long double) value * s_powers [scale]
                                        : (long double) value / s_powers [-scale];
        long double whole = floorl (scaled);
        long double fraction = scaled - whole;
        if (fabsl (fraction - 0.5L) <= margin)
            return S_UNSURE;
        long double rounded = fraction > 0.5L ? whole + 1 : whole;
        //  log10 may be a step off near a power of ten, and rounding up
        //  may reach the next power
        if (rounded >= high) {
            guess++;
            continue;
        }
        if (rounded < low) {
            guess--;
            continue;
        }
        long double half_unit = scale >= 0 ? s_power_of_two (binary - 54) * s_powers [scale]
                                           : s_power_of_two (binary - 54) / s_powers [-scale];
        long double distance = fabsl (rounded - scaled);
        *integer = (uint64_t) rounded;
        *exponent = guess;
        if (distance + margin < half_unit)
            return S_YES;
        if (distance - margin > half_unit)
            return S_NO;
        return S_UNSURE;
    }
#else
    (void) value;
    (void) precision;
    (void) integer;
    (void) exponent;
#endif
    return S_UNSURE;
}

//  The shortest digits the fast way: 0, or -1 when unsure somewhere
static int
s_fast_shortest (double value, uint64_t *integer, int *count, int *exponent)
{
    int rc = s_fast_digits (value, 16, integer, exponent);
    if (rc == S_YES) {
        uint64_t shorter;
        int shorter_exponent;
        rc = s_fast_digits (value, 15, &shorter, &shorter_exponent);
        if (rc == S_UNSURE)
            return -1;
        *count = 16;
        if (rc == S_YES) {
            *integer = shorter;
            *exponent = shorter_exponent;
            *count = 15;
            while (*count > 1 && *integer % 10 == 0) {
                *integer /= 10;
                (*count)--;
            }
        }
        return 0;
    }
    //  A power of two, where 15 digits may read back after 16 did not,
    //  is left to the exact way: s_fast_digits is unsure there
    if (rc == S_NO && s_fast_digits (value, 17, integer, exponent) == S_YES) {
        *count = 17;
        return 0;
    }
    return -1;
}

//  value (> 0) rounded to precision digits by printf, into digits; true
//  when strtod reads that back as value
static bool
s_exact_digits (double value, int precision, char *digits, int *exponent)
{
    char text [40];
    snprintf (text, sizeof (text), "%.*e", precision - 1, value);
    int count = 0;
    const char *cursor = text;
    for (; *cursor && *cursor != 'e'; cursor++)
        if (*cursor != '.')
            digits [count++] = *cursor;
    digits [count] = 0;
    *exponent = *cursor ? atoi (cursor + 1) : 0;
    return strtod (text, NULL) == value;
}

static int
s_strip_zeros (char *digits)
{
    int count = (int) strlen (digits);
    while (count > 1 && digits [count - 1] == '0')
        digits [--count] = 0;
    return count;
}

//  The same choice, with printf and strtod
static int
s_exact_shortest (double value, char *digits, int *exponent)
{
    //  A subnormal has fewer significant bits: its shortest may be shorter
    //  than rounding to 15 finds, so every length in turn
    if (value < DBL_MIN) {
        for (int precision = 1; precision < 17; precision++)
            if (s_exact_digits (value, precision, digits, exponent))
                return precision;
        s_exact_digits (value, 17, digits, exponent);
        return 17;
    }
    char tried [ZG_NUMBER_DIGITS_MAX + 8];
    int tried_exponent;
    if (s_exact_digits (value, 16, tried, &tried_exponent)) {
        if (s_exact_digits (value, 15, digits, exponent))
            return s_strip_zeros (digits);
        memcpy (digits, tried, 17);
        *exponent = tried_exponent;
        return 16;
    }
    int binary;
    if (frexp (value, &binary) == 0.5 && s_exact_digits (value, 15, digits, exponent))
        return s_strip_zeros (digits);
    s_exact_digits (value, 17, digits, exponent);
    return 17;
}

int
zg_number_shortest (double value, char digits [ZG_NUMBER_DIGITS_MAX + 1], int *exponent)
{
    assert (isfinite (value));
    assert (digits && exponent);
    value = fabs (value);
    if (value == 0) {
        digits [0] = '0';
        digits [1] = 0;
        *exponent = 0;
        return 1;
    }
    uint64_t integer;
    int count;
    if (s_fast_shortest (value, &integer, &count, exponent) == 0) {
        digits [count] = 0;
        for (int index = count - 1; index >= 0; index--) {
            digits [index] = (char) ('0' + integer % 10);
            integer /= 10;
        }
        return count;
    }
    return s_exact_shortest (value, digits, exponent);
}

//  Appends text to buf at *used if it fits with a NUL
static bool
s_put (char *buf, size_t size, size_t *used, const char *text, size_t length)
{
    if (*used + length >= size)
        return false;
    memcpy (buf + *used, text, length);
    *used += length;
    buf [*used] = 0;
    return true;
}

//  Appends a decimal integer, at least min_digits long
static bool
s_put_integer (char *buf, size_t size, size_t *used, int value, int min_digits)
{
    char text [16];
    size_t length = 0;
    unsigned magnitude = value < 0 ? 0u - (unsigned) value : (unsigned) value;
    do {
        text [sizeof (text) - 1 - length++] = (char) ('0' + magnitude % 10);
        magnitude /= 10;
    } while (magnitude || (int) length < min_digits);
    if (value < 0)
        text [sizeof (text) - 1 - length++] = '-';
    return s_put (buf, size, used, text + sizeof (text) - length, length);
}

int
zg_number_repr (double value, char *buf, size_t size)
{
    assert (buf && size);
    buf [0] = 0;
    size_t used = 0;
    if (isnan (value))
        return s_put (buf, size, &used, "nan", 3) ? 3 : -1;
    if (isinf (value))
        return value < 0 ? (s_put (buf, size, &used, "-inf", 4) ? 4 : -1)
                         : (s_put (buf, size, &used, "inf", 3) ? 3 : -1);
    char digits [ZG_NUMBER_DIGITS_MAX + 1];
    int exponent;
    size_t count = (size_t) zg_number_shortest (value, digits, &exponent);
    static const char zeros [] = "0000000000000000";
    bool fits = !signbit (value) || s_put (buf, size, &used, "-", 1);
    if (exponent < -4 || exponent >= 16) {
        fits = fits && s_put (buf, size, &used, digits, 1)
            && (count == 1 || (s_put (buf, size, &used, ".", 1)
                               && s_put (buf, size, &used, digits + 1, count - 1)))
            && s_put (buf, size, &used, exponent < 0 ? "e-" : "e+", 2)
            && s_put_integer (buf, size, &used, exponent < 0 ? -exponent : exponent, 2);
    }
    else
    if (exponent < 0)
        fits = fits && s_put (buf, size, &used, "0.", 2)
            && s_put (buf, size, &used, zeros, (size_t) (-exponent - 1))
            && s_put (buf, size, &used, digits, count);
    else
    if (count > (size_t) exponent + 1)
        fits = fits && s_put (buf, size, &used, digits, (size_t) exponent + 1)
            && s_put (buf, size, &used, ".", 1)
            && s_put (buf, size, &used, digits + exponent + 1, count - (size_t) exponent - 1);
    else
        fits = fits && s_put (buf, size, &used, digits, count)
            && s_put (buf, size, &used, zeros, (size_t) exponent + 1 - count)
            && s_put (buf, size, &used, ".0", 2);
    if (!fits) {
        buf [0] = 0;
        return -1;
    }
    return (int) used;
}

int
zg_number_json (double value, char *buf, size_t size)
{
    assert (buf && size);
    buf [0] = 0;
    if (!isfinite (value))
        return -1;
    char digits [ZG_NUMBER_DIGITS_MAX + 1];
    int exponent;
    int count = zg_number_shortest (value, digits, &exponent);
    //  digits x 10^(exponent - count + 1)
    int power = value == 0 ? 0 : exponent - count + 1;
    size_t used = 0;
    bool fits = (!signbit (value) || value == 0 || s_put (buf, size, &used, "-", 1))
             && s_put (buf, size, &used, digits, (size_t) count)
             && (power == 0 || (s_put (buf, size, &used, "e", 1)
                                && s_put_integer (buf, size, &used, power, 1)));
    if (!fits) {
        buf [0] = 0;
        return -1;
    }
    return (int) used;
}

//  ---------------------------------------------------------------------
//  Self test

//  Python's repr the slow way: every length in turn, printf for both forms
static void
s_reference_repr (double value, char *expected, size_t size)
{
    char digits [40];
    int precision;
    for (precision = 1; precision < 17; precision++) {
        snprintf (digits, sizeof (digits), "%.*e", precision - 1, value);
        if (strtod (digits, NULL) == value)
            break;
    }
    snprintf (digits, sizeof (digits), "%.*e", precision - 1, value);
    int exponent = atoi (strchr (digits, 'e') + 1);
    if (exponent < -4 || exponent >= 16)
        snprintf (expected, size, "%s", digits);
    else {
        int decimals = precision - 1 - exponent;
        snprintf (expected, size, "%.*f%s", decimals > 0 ? decimals : 0, value,
                  decimals > 0 ? "" : ".0");
    }
}

char *
zg_number_uint_text (uint64_t value, char *end)
{
    assert (end);
    //  Two digits at a time
    static const char pairs [] =
        "00010203040506070809101112131415161718192021222324252627282930313233343536373839"
        "40414243444546474849505152535455565758596061626364656667686970717273747576777879"
        "8081828384858687888990919293949596979899";
    char *cursor = end;
    while (value >= 100) {
        const char *pair = pairs + 2 * (value % 100);
        value /= 100;
        *--cursor = pair [1];
        *--cursor = pair [0];
    }
    if (value >= 10) {
        *--cursor = pairs [2 * value + 1];
        *--cursor = pairs [2 * value];
    }
    else
        *--cursor = (char) ('0' + value);
    return cursor;
}

void
zg_number_test (bool verbose)
{
    if (verbose)
        printf (" * zg_number: ");
    zg_tally_t tally = { "zg_number", 0, 0 };
    char buf [ZG_NUMBER_TEXT_MAX];

    //  Integers: printf's digits, at every length and at the edges
    {
        char text [ZG_NUMBER_UINT_MAX + 1], expected [32];
        char *end = text + ZG_NUMBER_UINT_MAX;
        uint64_t value = 0, step = 1;
        for (int round = 0; round < 2000; round++) {
            *end = 0;
            snprintf (expected, sizeof (expected), "%llu", (unsigned long long) value);
            ZG_TALLY (tally, strcmp (zg_number_uint_text (value, end), expected) == 0);
            value = round % 2 ? value * 10 + 9 : value + step;
            if (round % 40 == 39) {
                step = step * 3 + 1;
                value = step;
            }
        }
        *end = 0;
        ZG_TALLY (tally, strcmp (zg_number_uint_text (UINT64_MAX, end), "18446744073709551615") == 0);
        ZG_TALLY (tally, zg_number_uint_text (UINT64_MAX, end) == text);
        ZG_TALLY (tally, strcmp (zg_number_uint_text (0, end), "0") == 0);
    }
    static const struct { double value; const char *repr; const char *json; } cases [] = {
        { 0.5, "0.5", "5e-1" },
        { 10, "10.0", "1e1" },
        { 0, "0.0", "0" },
        { -0.0, "-0.0", "0" },
        { 1e-05, "1e-05", "1e-5" },
        { 3.7e-05, "3.7e-05", "37e-6" },
        { 0.0001, "0.0001", "1e-4" },
        { 0.1 + 0.2, "0.30000000000000004", "30000000000000004e-17" },
        { 1e16, "1e+16", "1e16" },
        { 1.5e16, "1.5e+16", "15e15" },
        { 1e15, "1000000000000000.0", "1e15" },
        { 123456.789, "123456.789", "123456789e-3" },
        { -2.5e-07, "-2.5e-07", "-25e-8" },
        { 1.0 / 3, "0.3333333333333333", "3333333333333333e-16" },
        { 5e-324, "5e-324", "5e-324" },
        { 1.7976931348623157e308, "1.7976931348623157e+308", "17976931348623157e292" },
        { 2.2250738585072014e-308, "2.2250738585072014e-308", "22250738585072014e-324" },
        { 7, "7.0", "7" },
        { 1e100, "1e+100", "1e100" },
    };
    for (size_t index = 0; index < sizeof (cases) / sizeof (cases [0]); index++) {
        ZG_TALLY (tally, zg_number_repr (cases [index].value, buf, sizeof (buf))
                         == (int) strlen (cases [index].repr));
        if (!ZG_TALLY (tally, strcmp (buf, cases [index].repr) == 0))
            printf ("repr (%a): %s, expected %s\n", cases [index].value, buf, cases [index].repr);
        ZG_TALLY (tally, zg_number_json (cases [index].value, buf, sizeof (buf))
                         == (int) strlen (cases [index].json));
        if (!ZG_TALLY (tally, strcmp (buf, cases [index].json) == 0))
            printf ("json (%a): %s, expected %s\n", cases [index].value, buf, cases [index].json);
    }
    ZG_TALLY (tally, zg_number_repr (NAN, buf, sizeof (buf)) == 3 && strcmp (buf, "nan") == 0);
    ZG_TALLY (tally, zg_number_repr (-INFINITY, buf, sizeof (buf)) == 4
                     && strcmp (buf, "-inf") == 0);
    ZG_TALLY (tally, zg_number_json (NAN, buf, sizeof (buf)) == -1 && buf [0] == 0);
    ZG_TALLY (tally, zg_number_json (INFINITY, buf, sizeof (buf)) == -1);
    //  Too small a buffer: nothing, -1
    ZG_TALLY (tally, zg_number_repr (0.30000000000000004, buf, 19) == -1 && buf [0] == 0);
    ZG_TALLY (tally, zg_number_repr (0.30000000000000004, buf, 20) == 19);
    ZG_TALLY (tally, zg_number_json (123456.789, buf, 12) == -1);
    ZG_TALLY (tally, zg_number_json (123456.789, buf, 13) == 12);

    //  The same text as the slow way, and JSON that reads back exactly:
    //  sums of prices as spend grows, powers of two and their neighbours,
    //  whole numbers, decimal fractions, and arbitrary bit patterns. The
    //  fast way must decide nearly all of them.
    uint64_t state = 88172645463325252ULL;
    double sum = 0;
    int mismatches = 0, unsure = 0, money = 0, rounds = 300000;
    for (int round = 0; round < rounds; round++) {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        double value;
        switch (round % 7) {
            case 0: sum += 0.000015 + (double) (state % 1000) * 1e-7; value = sum; break;
            case 1: value = ldexp (1.0, (int) (state % 200) - 100); break;
            case 2: value = (double) (state % 100000000) / ((state >> 40) % 2 ? 1 : 1000); break;
            case 3: value = nextafter (ldexp (1.0, (int) (state % 200) - 100),
                                       (state >> 32) % 2 ? 0 : 4); break;
            case 4: value = (double) (state % 10000000) * 1e-9 * (double) ((state >> 50) % 7 + 1);
                    break;
            default: {
                memcpy (&value, &state, sizeof (value));
                if (!isfinite (value))
                    value = 1.5;
            }
        }
        char expected [64];
        s_reference_repr (value, expected, sizeof (expected));
        zg_number_repr (value, buf, sizeof (buf));
        if (strcmp (buf, expected) != 0 && mismatches++ < 5)
            printf ("repr (%a): %s, expected %s\n", value, buf, expected);
        zg_number_json (value, buf, sizeof (buf));
        if (strtod (buf, NULL) != value && mismatches++ < 5)
            printf ("json (%a): %s does not read back\n", value, buf);
        //  Money: the fast way decides nearly all
        uint64_t integer;
        int count, exponent;
        if ((round % 7 == 0 || round % 7 == 4) && value != 0) {
            money++;
            if (s_fast_shortest (fabs (value), &integer, &count, &exponent) != 0)
                unsure++;
        }
    }
    ZG_TALLY (tally, mismatches == 0);
    if (S_FAST && !ZG_TALLY (tally, unsure < money / 20))
        printf ("the fast way was unsure of %d of %d sums of money\n", unsure, money);
    if (verbose)
        printf ("(%d of %d sums of money the exact way) ", unsure, money);
    zg_tally_finish (&tally);
}
