# Warnings and sanitizers for every target of the project.
add_compile_options(-Wall -Wextra -Wshadow -Wstrict-prototypes -Wmissing-prototypes
                    -Wno-unused-parameter)
if(GREENRING_WERROR)
  add_compile_options(-Werror)
endif()
if(GREENRING_SANITIZE)
  list(JOIN GREENRING_SANITIZE "," _gr_san)
  add_compile_options(-fsanitize=${_gr_san} -fno-omit-frame-pointer -fno-sanitize-recover=undefined)
  add_link_options(-fsanitize=${_gr_san})
endif()
