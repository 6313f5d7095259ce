/* cJSON allocates through the library's wrapper (bl_malloc), so an injected allocation failure
 * reaches the JSON parser and printer too. Call before any cJSON use; cheap after the first. */
#ifndef BNLAB_TRAIN_JSON_H
#define BNLAB_TRAIN_JSON_H
void bl_json_init(void);
/* cJSON_Parse through the hooks; NULL with *oom set when an allocation failed (cJSON itself says
 * only "NULL"), so a caller tells "out of memory" from "malformed". */
struct cJSON;
struct cJSON *bl_json_parse(const char *text, int *oom);
#endif
