#  Turns db/migrations/*.sql into a C source, so that the binary carries its
#  migrations and a read-only container needs no files:
#    cmake -DSOURCE_DIR=<dir of *.sql> -DOUTPUT=<file.c> -P embed_migrations.cmake
#  The bytes are copied exactly: the checksum recorded for a migration is
#  the SHA-256 of the file, whichever way it was read.

file(GLOB files RELATIVE ${SOURCE_DIR} ${SOURCE_DIR}/*.sql)
list(SORT files)
set(body "")
set(table "")
set(index 0)
foreach(name ${files})
  file(READ ${SOURCE_DIR}/${name} hex HEX)
  string(LENGTH "${hex}" hex_length)
  math(EXPR size "${hex_length} / 2")
  string(REGEX REPLACE "([0-9a-f][0-9a-f])" "0x\\1," bytes "${hex}")
  #  Break the array every 16 bytes to keep lines short
  string(REGEX REPLACE "((0x..,){16})" "\\1\n    " bytes "${bytes}")
  string(APPEND body "static const unsigned char s_migration_${index} [] = {\n    ${bytes}0x00\n};\n")
  string(APPEND table "    { \"${name}\", s_migration_${index}, ${size} },\n")
  math(EXPR index "${index} + 1")
endforeach()

set(text "/*  Generated from the .sql files of db/migrations by db/embed_migrations.cmake; do not edit.  */\n")
string(APPEND text "#include \"db/zg_migrate.h\"\n\n${body}\n")
string(APPEND text "const zg_migration_file_t zg_migrations_embedded [] = {\n${table}    { NULL, NULL, 0 }\n};\n")
string(APPEND text "const size_t zg_migrations_embedded_count = ${index};\n")

#  Write only when the text changed, so that an unchanged tree relinks nothing
if(EXISTS ${OUTPUT})
  file(READ ${OUTPUT} old)
else()
  set(old "")
endif()
if(NOT old STREQUAL text)
  file(WRITE ${OUTPUT} "${text}")
endif()
